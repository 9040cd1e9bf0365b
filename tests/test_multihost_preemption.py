"""Synchronized preemption: SIGTERM on one host of a two-process job stops both at the same step with one checkpoint.

Two `python -m oresearcher.train` processes with 2 CPU devices each form one 4-device SFT job (as in
tests/test_multihost.py). Once a few steps are logged, only process 1 gets SIGTERM; the stop flag is agreed at
every step boundary, so both processes save the same step together and exit 0."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from test_multihost import ARGS, REPO, _env, _free_port


@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_one_step(tmp_path):
    workdir = tmp_path / "run"
    port = _free_port()
    args = [a for a in ARGS if not a.startswith(("--config.total_steps", "--config.checkpoint_every"))]
    procs = [subprocess.Popen([sys.executable, "-m", "oresearcher.train", *args, "--config.total_steps=100000",
                               "--config.checkpoint_every=100000", f"--config.workdir={workdir}",
                               "--log_all_processes"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                "\n".join(p.communicate()[0][-3000:] for p in procs if p.poll() is not None)
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    stops = [re.findall(r"sft: (.+) at step (\d+): checkpoint saved, exiting", o) for o in outs]
    print(stops)
    assert [s[0][0] for s in stops] == ["stop request from another process", "SIGTERM"]
    step = int(stops[0][0][1])
    assert int(stops[1][0][1]) == step >= 3                  # the same step on both hosts
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [step]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, step + 1))                # one writer, and nothing after the stop

"""Multi-host: two processes joined by `jax.distributed.initialize()` train exactly like one process.

Two `python -m oresearcher.train` processes with 2 CPU devices each (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, as on a GPU cluster) form one 4-device mesh; each loads its own half of every batch. Their
losses must equal a single process with 4 devices, and only process 0 writes metrics.jsonl."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oresearcher.train import _multi_process_environment

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/sft.py:tiny", "--config.total_steps=4", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.data.batch_size=4", "--config.progress=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
    return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _losses(workdir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_environment_detection():
    assert not _multi_process_environment({})
    assert _multi_process_environment({"JAX_COORDINATOR_ADDRESS": "h0:1234"})
    assert _multi_process_environment({"SLURM_NTASKS": "4"})
    assert not _multi_process_environment({"SLURM_NTASKS": "1"})
    assert _multi_process_environment({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert not _multi_process_environment({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert not _multi_process_environment({"JAX_COORDINATOR_ADDRESS": "h0:1", "ORESEARCHER_DISTRIBUTED": "0"})


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "oresearcher.train", *ARGS, f"--config.workdir={tmp_path / 'mh'}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    single = subprocess.run([sys.executable, "-m", "oresearcher.train", *ARGS, f"--config.workdir={tmp_path / 'one'}"],
                            cwd=REPO, capture_output=True, text=True, env=_env(4), timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert single.returncode == 0, single.stderr[-3000:]
    multi, one = _losses(tmp_path / "mh"), _losses(tmp_path / "one")
    print("2 processes x 2 devices:", multi, "\n1 process x 4 devices:", one)
    assert len(multi) == len(one) == 4                      # one writer: process 0 only
    np.testing.assert_allclose(multi, one, rtol=0, atol=1e-6)
    assert "on 4 cpu device(s)" in outs[0]                  # process 0 sees the global mesh
    assert "sft:" not in outs[1]                            # and prints alone (--log_all_processes: all do)

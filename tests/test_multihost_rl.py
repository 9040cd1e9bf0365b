"""Multi-host RL: two processes x 2 CPU devices train like one process x 4 devices.

`python -m oresearcher.train --config=configs/rl.py:tiny` as two processes joined by jax.distributed (the JAX_*
variables): process 0 starts the one synth service and sends the other its URL, each process runs the rollouts of
half the questions on its own two devices and scores them, the scored episodes are exchanged, and the update runs
on the 4-device mesh. With `rollout.seed_per_group` a group's sampling is seeded by its index in the step, so the
episodes do not depend on the number of processes; a single process on 4 devices, starting from the same policy
(the two-process run's warm start), must then see the same episodes, rewards and losses, step after step (step 2
samples with the updated policy: the hosts' copies must have followed the update).

The rollouts run on the lockstep backend: the engine draws each decode chunk's randomness from a counter of its
decode calls, which depends on when tool calls come back (slots decode while others wait), so its episodes at
temperature 1 differ from run to run even on one layout. The mesh is data 2 x tensor 2: the rollout engine's prefill takes a power-of-two number of pending rows, which
a data axis of 4 does not always divide (the indivisible-axis rule), while 2 always does or the count is 1."""
import json
import subprocess
import sys

import pytest
from test_multihost import REPO, _env, _free_port

ARGS = ["--config=configs/rl.py:tiny", "--config.total_steps=2", "--config.checkpoint_every=2",
        "--config.mesh={'data': 2, 'tensor': 2}", "--config.rollout.seed_per_group=True",
        "--config.rollout.backend=lockstep",
        "--config.warm_start.batch_size=4", "--config.warm_start.steps=100"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    mh, one = tmp_path / "mh", tmp_path / "one"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "oresearcher.train", *ARGS, f"--config.workdir={mh}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = [p.communicate(timeout=1500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-4000:] for o in outs)
    # the same starting policy: the two-process warm start (a multi-process SFT, equal to a one-process one)
    single = subprocess.run([sys.executable, "-m", "oresearcher.train", *ARGS, f"--config.workdir={one}",
                             f"--config.init_checkpoint={mh / 'warm_start' / 'policy'}"],
                            cwd=REPO, capture_output=True, text=True, env=_env(4), timeout=1500)
    assert single.returncode == 0, single.stderr[-4000:]

    multi, alone = _rows(mh / "metrics.jsonl"), _rows(one / "metrics.jsonl")
    for m, a in zip(multi, alone):
        print({k: (m[k], a[k]) for k in ("step", "reward", "train/loss", "groups/informative")})
    assert [r["step"] for r in multi] == [r["step"] for r in alone] == [1, 2]     # process 0 wrote, once
    assert multi[0]["groups/informative"] > 0 and "train/loss" in multi[0]         # an update happened
    for m, a in zip(multi, alone):
        assert m["reward"] == pytest.approx(a["reward"], abs=1e-9)
        assert m["train/loss"] == pytest.approx(a["train/loss"], abs=1e-3)
    # the very same episodes, in the same order, on both layouts
    key = lambda r: (r["step"], r["group"], r["response"], r["reward"])
    assert [key(r) for r in _rows(mh / "episodes.jsonl")] == [key(r) for r in _rows(one / "episodes.jsonl")]
    # one service (process 0's), one console: process 1 prints nothing but what it must
    assert outs[0].count("step    1 |") == 1 and "step    1 |" not in outs[1]
    assert "rl: synth service at http://127.0.0.1:" in outs[0]
    assert sorted(d.name for d in (mh / "checkpoints").iterdir() if d.name.isdigit()) == ["2"]

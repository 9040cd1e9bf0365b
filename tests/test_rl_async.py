"""Asynchronous GRPO (`max_staleness=1`) end to end on the tiny preset, against a real synth service on loopback.

With the learning rate at 0 every policy version is the same, so the asynchronous loop (step s + 1 sampled on the
rollout thread, from the rollout's own parameter copy, while step s trains) must produce exactly the episodes,
rewards and losses of the synchronous one; its metrics must say how old each step's episodes were. With the
learning rate on, the run must train (losses finite, a checkpoint whose question cursor is the trained steps')."""
import json
import subprocess
import sys

import pytest
from test_multihost import REPO, _env

ARGS = ["--config=configs/rl.py:tiny", "--config.total_steps=3", "--config.checkpoint_every=2",
        "--config.rollout.backend=engine"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train(workdir, *extra):
    done = subprocess.run([sys.executable, "-m", "oresearcher.train", *ARGS, f"--config.workdir={workdir}", *extra],
                          cwd=REPO, capture_output=True, text=True, env=_env(1), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_async_equals_sync_when_the_policy_does_not_change_and_trains_when_it_does(tmp_path):
    sync, lagged, learning = tmp_path / "sync", tmp_path / "async", tmp_path / "learning"
    _train(sync, "--config.max_staleness=0", "--config.optim.lr=0")
    start = f"--config.init_checkpoint={sync / 'warm_start' / 'policy'}"
    _train(lagged, "--config.max_staleness=1", "--config.optim.lr=0", start)
    a, b = _rows(sync / "metrics.jsonl"), _rows(lagged / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    assert [r["staleness"] for r in a] == [0, 0, 0] and [r["staleness"] for r in b] == [0, 1, 1]
    assert any("train/loss" in r for r in a)         # updates happened (informative groups), at learning rate 0
    for x, y in zip(a, b):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-9)
        if "train/loss" in x:
            assert x["train/loss"] == pytest.approx(y["train/loss"], abs=1e-6)
    key = lambda r: (r["step"], r["group"], r["response"], r["reward"])
    assert [key(r) for r in _rows(sync / "episodes.jsonl")] == [key(r) for r in _rows(lagged / "episodes.jsonl")]

    out = _train(learning, "--config.max_staleness=1", "--config.grpo.behaviour_cap=2.0", start)
    rows = _rows(learning / "metrics.jsonl")
    assert [r["staleness"] for r in rows] == [0, 1, 1] and "step    3" in out
    trained = [r for r in rows if "train/loss" in r]
    assert trained and all(0 < r["train/behaviour_weight"] <= 2.0 for r in trained)
    # the checkpoint of step 2 holds the question cursor where step 2's questions ended ((1 + 2) x q: step s
    # starts at s x q), not where step 3's, already drawn by the rollout thread, end ((1 + 3) x q): a resumed
    # run samples step 3 again
    q = json.loads((learning / "config.json").read_text())["questions_per_step"]
    data = learning / "checkpoints" / "2" / "data" / "metadata"
    assert json.loads(data.read_text())["cursor"] == 3 * q

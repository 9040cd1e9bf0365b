"""End to end: `python -m oresearcher.train --config=configs/rl.py:tiny` against a real synth service on loopback.

The tiny preset warm-starts a tiny decoder with a short SFT on embedded-synthesizer trajectories, then runs 20
GRPO steps with tool calls over HTTP and the synth judge. The format reward must rise: the mean of the last five
steps above that of step 1, whose 32 episodes are sampled before any update (the warm-start policy); and every
logged step must carry the reward parts and the time split. (Step 1 rather than the first five steps: most of
the rise happens in the first two updates, see configs/rl.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("reward", "reward/base", "reward/tool", "reward/format", "judge/abstained", "tool_calls",
            "response_tokens", "time/generate", "time/tools", "time/judge", "time/train")


@pytest.mark.slow
def test_tiny_grpo_raises_format_reward(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", ORESEARCHER_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "oresearcher.train", "--config=configs/rl.py:tiny",
           f"--config.workdir={tmp_path / 'rl'}"]
    # ~7 minutes alone on 2 cores; the margin is for a CI machine whose other worker runs the rest of the suite
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert all(k in r for k in REQUIRED), sorted(set(REQUIRED) - set(r))
    fmt = np.array([r["reward/format"] for r in records])
    first, last = fmt[0], fmt[-5:].mean()
    print(f"format reward: step 1 (before any update) {first:.3f} -> last 5 steps {last:.3f}; first 5 steps "
          f"{fmt[:5].mean():.3f}; per step {np.round(fmt, 2).tolist()}")
    print(f"reward: first 5 {np.mean([r['reward'] for r in records[:5]]):.3f} -> "
          f"last 5 {np.mean([r['reward'] for r in records[-5:]]):.3f}")
    assert last > first
    assert "time/generate" in done.stdout or "generate" in done.stdout

"""config.profile writes a JAX profiler trace of the chosen steps under the workdir; TensorBoard scalars come from
tensorboardX alone."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from oresearcher import metrics

REPO = Path(__file__).resolve().parents[1]


def test_tiny_sft_traces_the_chosen_step(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "oresearcher.train", "--config=configs/sft.py:tiny",
                        f"--config.workdir={tmp_path}", "--config.progress=False", "--config.total_steps=2",
                        "--config.profile.start_step=2", "--config.profile.num_steps=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "profile: steps 2-2 traced" in p.stdout
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_profiler_window_and_default_off(tmp_path):
    f = jax.jit(lambda x: x @ x)
    x = jnp.ones((64, 64))
    off = metrics.StepProfiler(tmp_path / "off", {"start_step": 0, "num_steps": 0})
    on = metrics.StepProfiler(tmp_path / "on", {"start_step": 3, "num_steps": 2})
    seen = []
    for step in range(1, 7):
        for p in (off, on):
            p.before(step)
        y = f(x)
        for p in (off, on):
            p.after(step, y)
        seen.append(on.active)
    assert seen == [False, False, True, False, False, False]   # active after step 3, stopped after step 4
    assert not (tmp_path / "off").exists()
    assert list((tmp_path / "on").rglob("*.xplane.pb"))
    on.stop()   # idempotent


@pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is None, reason="tensorboardX is not installed")
def test_tensorboard_events_from_tensorboardx(tmp_path):
    w = metrics.MetricsWriter(tmp_path, 3, progress=False)
    w.write(1, {"loss": 2.0, "note": "text is not a scalar"})
    w.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"loss" in events[0].read_bytes()

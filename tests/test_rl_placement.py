"""Where the rollouts run (oresearcher/rl/placement.py), on 8 fake CPU devices: split placement puts the trainer on
4 devices and the rollouts' copy of the policy on the other 4, whose parameters follow every update only when
refreshed; the tiny preset trains end to end that way, asynchronously."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict
from test_multihost import REPO, _env

from oresearcher import sharding
from oresearcher.model import PRESETS, Decoder
from oresearcher.rl import placement


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_split_placement_copies_the_weights_to_the_rollout_devices_after_each_update():
    config = ConfigDict({"placement": "split", "rollout_devices": 4, "mesh": {"fsdp": 4}, "max_staleness": 1})
    place = placement.make(config)
    devices = jax.devices()
    assert set(place.mesh.devices.flat) == set(devices[:4])
    assert set(place.rollout_mesh.devices.flat) == set(devices[4:])
    model = sharding.shard_model(Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0)), place.mesh)
    copy = place.rollout_model(model)
    for a, b in zip(_params(model), _params(copy), strict=True):
        assert set(b.devices()) <= set(devices[4:]) and set(a.devices()) <= set(devices[:4])
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # an update of the trainer's parameters (here: + 1) leaves the copy as it was until the refresh
    before = [np.asarray(a) for a in _params(model)]
    nnx.update(model, jax.tree.map(lambda v: v + 1.0, nnx.state(model, nnx.Param)))
    for old, a, b in zip(before, _params(model), _params(copy)):
        assert not np.array_equal(np.asarray(a), old)
        np.testing.assert_array_equal(old, np.asarray(b))
    place.refresh(copy, model)
    for a, b in zip(_params(model), _params(copy)):
        assert set(b.devices()) <= set(devices[4:])
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_placement_errors_name_the_fix():
    with pytest.raises(ValueError, match="rollout_devices between 1 and 7"):
        placement.make(ConfigDict({"placement": "split", "rollout_devices": 8, "mesh": {"data": -1}}))
    with pytest.raises(ValueError, match="colocated"):
        placement.make(ConfigDict({"placement": "elsewhere", "mesh": {"data": -1}}))


@pytest.mark.slow
def test_the_tiny_preset_trains_with_split_placement(tmp_path):
    cmd = [sys.executable, "-m", "oresearcher.train", "--config=configs/rl.py:tiny", f"--config.workdir={tmp_path}",
           "--config.total_steps=2", "--config.placement=split", "--config.rollout_devices=4",
           "--config.mesh={'data': 4}", "--config.max_staleness=1", "--config.rollout.backend=engine",
           "--config.warm_start.steps=100", "--config.warm_start.batch_size=4"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(8), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and [r["staleness"] for r in rows] == [0, 1]
    assert "rl: mesh {'data': 4" in done.stdout

"""Checkpoints that cannot be used: a damaged newest step (its data files truncated on disk after the write was
committed) is reported in one line and the previous kept step restores; a checkpoint of another model size is
an error naming the directory and both sizes; every damaged step -> a clear error. Then the same through
`python -m oresearcher.train`, with an unknown --config flag and a model_overrides field the preset does not set."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from oresearcher import checkpoint, optim, sft, sharding
from oresearcher.model import PRESETS, Decoder

REPO = Path(__file__).resolve().parents[1]


def _trainer(cfg=PRESETS["tiny"]):
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    sharding.shard_model(model, mesh)
    c = ConfigDict(dict(lr=1e-2, warmup_fraction=0.0, warmup_steps=1, final_lr_fraction=0.1, b1=0.9, b2=0.95,
                        eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    tx, schedule = optim.make_optimizer(c, 10)
    return sft.make_train_step(model, tx, schedule, mesh, loss_chunk=16, batch_shape=(2, 16))


def truncate_step(directory: Path, step: int) -> list[Path]:
    """Cut every array data file of a committed step to half its size, as a full disk or a bad copy would."""
    files = [f for f in (directory / str(step) / "state").rglob("*") if f.is_file() and "/d/" in f.as_posix()]
    assert files
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[:len(data) // 2])
    return files


def test_damaged_newest_step_falls_back_to_the_previous_one(tmp_path):
    t = _trainer()
    target = checkpoint.abstract_like(t.state, t.state_shardings)
    bump = lambda k: jax.tree.map(lambda x: x + k if x.dtype.kind == "f" else x, t.state)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, bump(step), {"index": step}, wait=True)
    ckpt.close()
    truncate_step(tmp_path / "checkpoints", 3)

    lines = []
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    step, state, data_state = ckpt.restore_latest(target, log=lines.append)
    assert (step, data_state) == (2, {"index": 2})
    np.testing.assert_array_equal(np.asarray(state["params"]["embed"]), np.asarray(bump(2)["params"]["embed"]))
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith(f"checkpoint {tmp_path / 'checkpoints' / '3'} cannot be restored (")
    assert lines[0].endswith("using the previous kept step 2")
    assert lines[1] == "resuming from step 2, the newest kept checkpoint that restores"
    # the run goes on and saves step 3 again: the damaged step is replaced, not kept as "already saved"
    ckpt.save(3, bump(30), {"index": 30}, wait=True)
    ckpt.close()
    lines.clear()
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    step, _, data_state = ckpt.restore_latest(target, log=lines.append)
    assert (step, data_state, lines) == (3, {"index": 30}, [])
    ckpt.close()


def test_every_step_damaged_is_an_error(tmp_path):
    t = _trainer()
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    ckpt.save(1, t.state, {}, wait=True)
    ckpt.close()
    truncate_step(tmp_path / "checkpoints", 1)
    lines = []
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    with pytest.raises(checkpoint.CheckpointError, match=r"none of the kept checkpoints in .* \(steps \[1\]\)"):
        ckpt.restore_latest(checkpoint.abstract_like(t.state, t.state_shardings), log=lines.append)
    assert len(lines) == 1 and lines[0].endswith("no earlier step is kept")
    ckpt.close()


def test_checkpoint_of_another_model_names_directory_and_both_sizes(tmp_path):
    small = _trainer()
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
    ckpt.save(1, small.state, {}, wait=True)
    big = _trainer(dataclasses.replace(PRESETS["tiny"], num_layers=3))
    n_small = PRESETS["tiny"].num_params
    n_big = dataclasses.replace(PRESETS["tiny"], num_layers=3).num_params
    with pytest.raises(checkpoint.CheckpointError) as err:
        ckpt.restore_latest(checkpoint.abstract_like(big.state, big.state_shardings))
    message = str(err.value)
    print(message)
    assert f"the checkpoints in {tmp_path / 'checkpoints'} are of another model" in message
    assert f"{n_small / 1e6:.2f}M parameters, this run's model has {n_big / 1e6:.2f}M" in message
    assert "(2, 64) saved, (3, 64) now" in message and "strict" not in message
    ckpt.close()


def _train(workdir, *overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "oresearcher.train", "--config=configs/sft.py:tiny",
                           f"--config.workdir={workdir}", "--config.progress=False", "--config.data.eval_fraction=0",
                           "--config.log_every=1", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_command_resumes_past_a_damaged_step_and_names_bad_flags(tmp_path):
    work = tmp_path / "run"
    first = _train(work, "--config.total_steps=2", "--config.checkpoint_every=1")
    assert first.returncode == 0, first.stderr[-3000:]
    truncate_step(work / "checkpoints", 2)
    again = _train(work, "--config.total_steps=3", "--config.checkpoint_every=1")
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout.splitlines()
    damaged = [line for line in out if "cannot be restored" in line]
    assert damaged == [line for line in out if line.startswith(f"sft: checkpoint {work / 'checkpoints' / '2'} ")]
    assert len(damaged) == 1 and damaged[0].endswith("using the previous kept step 1")
    assert f"sft: resumed from {work / 'checkpoints'}/1" in out
    # The run's own output has no traceback. stderr may still hold orbax's: the sibling read tasks of the failed
    # restore are logged by asyncio when collected, and its background thread can race its closed event loop at
    # exit, depending on timing (a known gap: silencing them needs orbax's restore to cancel its siblings).
    assert "Traceback" not in again.stdout

    # another model size over the same workdir: one line naming it and both sizes (num_layers is not a key the
    # preset's model_overrides sets: every ModelConfig field can be overridden)
    other = _train(work, "--config.total_steps=4", "--config.model_overrides.num_layers=3")
    assert other.returncode == 1
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith(f"oresearcher.train: the checkpoints in {work / 'checkpoints'} are of another model")
    assert "M parameters, this run's model has" in last and "Traceback" not in other.stderr

    nope = _train(work, "--config.nope=1")
    assert nope.returncode == 2
    assert nope.stderr.strip().splitlines()[-1].startswith(
        "oresearcher.train: unknown flag --config.nope: the config has no key 'nope'")
    assert "Traceback" not in nope.stderr

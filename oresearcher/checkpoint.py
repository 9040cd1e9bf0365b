"""Checkpoints of a training run: the train state (any pytree of sharded arrays) plus the data-iterator state.

    ckpt = Checkpointer(workdir / "checkpoints", keep=2)
    ckpt.save(step, state, data_state={"epoch": 0, "index": 96})   # async: training goes on while it writes
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(ckpt.latest_step(), target=abstract_state)
    ckpt.close()                                                     # waits for pending writes

Orbax's CheckpointManager writes step directories atomically (a step that was being written when the job died is
never the one restored) and deletes all but the newest `keep`. `target` is a pytree of jax.ShapeDtypeStruct with
`.sharding` set (see `abstract_like`): restoring reads each shard straight onto those devices, so a checkpoint
written on one mesh restores onto another (8 devices -> 1, FSDP -> tensor parallel) without a host gather.
The data state is JSON, so the resumed run sees the very same batches in the same order.
"""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def abstract_like(tree, shardings=None):
    """ShapeDtypeStructs (with shardings: `shardings`, or each array's own) describing `tree`: a restore target."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None, *, wait: bool = False) -> None:
        """Start writing `state` (and the JSON-able data-iterator state) for `step`; returns before the write ends
        unless `wait`. Saving the same step twice is a no-op."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})), force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, step: int, target=None):
        """(state, data_state) of `step`, placed per `target`'s shardings (a pytree of ShapeDtypeStruct); with no
        target, as saved (for inspection)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"] or {})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

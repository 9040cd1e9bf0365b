"""Checkpoints of a training run: the train state (any pytree of sharded arrays) plus the data-iterator state.

    ckpt = Checkpointer(workdir / "checkpoints", keep=2)
    ckpt.save(step, state, data_state={"epoch": 0, "index": 96})   # async: training goes on while it writes
    resumed = ckpt.restore_latest(target=abstract_state)             # None, or (step, state, data_state)
    ckpt.close()                                                     # waits for pending writes

Orbax's CheckpointManager writes step directories atomically (a step that was being written when the job died is
never the one restored) and deletes all but the newest `keep`. `target` is a pytree of jax.ShapeDtypeStruct with
`.sharding` set (see `abstract_like`): restoring reads each shard straight onto those devices, so a checkpoint
written on one mesh restores onto another (8 devices -> 1, FSDP -> tensor parallel) without a host gather.
The data state is JSON, so the resumed run sees the very same batches in the same order. The directory may be
a cloud URL (gs://bucket/run/checkpoints): orbax writes there directly.

`restore_latest` resumes from the newest step that restores: a damaged step (a file truncated or lost after its
write was committed) is reported in one line and the previous kept step is used, and the damaged step is
replaced when the run saves that step again. A checkpoint of another model (other parameter shapes) is an error
naming the checkpoint directory and both model sizes, before anything is read.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from oresearcher import paths


class CheckpointError(RuntimeError):
    """No kept checkpoint can be restored, or the checkpoints are of another model."""


def abstract_like(tree, shardings=None):
    """ShapeDtypeStructs (with shardings: `shardings`, or each array's own) describing `tree`: a restore target."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int | None = 2, async_save: bool = True):
        self.directory = paths.absolute(directory)   # gs://bucket/run/checkpoints stays a bucket path
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        # handlers named up front so that a step's metadata (its shapes) can be read before any restore
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
        self.damaged: set[int] = set()     # steps that failed to restore: overwritten when saved again

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None, *, wait: bool = False) -> None:
        """Start writing `state` (and the JSON-able data-iterator state) for `step`; returns before the write ends
        unless `wait`. Saving the same step twice is a no-op."""
        if step in self.manager.all_steps():
            if step not in self.damaged:
                return
            self.manager.delete(step)
            self.damaged.discard(step)
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

    def restore_params(self, step: int, target):
        """Only the "params" subtree of `step`'s state (SFT and RL checkpoints both hold one), placed per
        `target`'s shardings: the optimizer state is never read (an export needs a third of the memory)."""
        restored = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item={"params": target}, partial_restore=True,
                                        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target})))
        return restored["params"]

    def restore_latest(self, target, log: Callable[[str], None] = print):
        """(step, state, data_state) of the newest kept step that restores onto `target`, None when there is no
        checkpoint. A step that fails to restore is reported through `log` in one line and the previous kept step
        is tried; CheckpointError when none restores or when the checkpoints hold another model."""
        steps = sorted(self.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                self.check_model(step, target)
                state, data_state = self.restore(step, target)
            except CheckpointError:
                raise
            except Exception as e:   # orbax and tensorstore report damage as ValueError, OSError, JSON errors...
                self.damaged.add(step)
                reason = " ".join(str(e).split())[:300]
                then = (f"using the previous kept step {steps[i + 1]}" if i + 1 < len(steps)
                        else "no earlier step is kept")
                log(f"checkpoint {self.directory / str(step)} cannot be restored ({type(e).__name__}: {reason}); "
                    f"{then}")
                continue
            if i:
                log(f"resuming from step {step}, the newest kept checkpoint that restores")
            return step, state, data_state
        if steps:
            raise CheckpointError(f"none of the kept checkpoints in {self.directory} (steps {sorted(steps)}) can be "
                                  "restored (see above); move the directory aside to start afresh")
        return None

    def check_model(self, step: int, target) -> None:
        """CheckpointError naming the directory and both model sizes when `step` holds parameters of other shapes
        than `target`'s (its "params" subtree when it has one)."""
        saved = _shapes(self.manager.item_metadata(step)["state"].tree)
        wanted = _shapes(target)
        if saved == wanted:
            return
        differ = sorted(set(saved) ^ set(wanted)) or [k for k in sorted(saved) if saved[k] != wanted[k]]
        first = differ[0]
        raise CheckpointError(
            f"the checkpoints in {self.directory} are of another model: step {step} holds "
            f"{_size(saved)} parameters, this run's model has {_size(wanted)} (first difference: {first} "
            f"{saved.get(first, 'absent')} saved, {wanted.get(first, 'absent')} now); use another --config.workdir "
            "or the model that wrote it")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """Parameter path -> shape of a train state (or of its orbax metadata): the "params" subtree when present."""
    if isinstance(tree, dict) and "params" in tree:
        tree = tree["params"]
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _size(shapes: dict[str, tuple[int, ...]]) -> str:
    n = sum(int(np.prod(s)) for s in shapes.values())
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)

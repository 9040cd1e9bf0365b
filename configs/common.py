"""Shared pieces of every stage's config: the base keys, mesh presets, and the sharding rules table.

    from configs import common
    c = common.base_config()            # workdir, seed, total_steps, log_every, checkpoint_every, eval_every, ...
    c.mesh = common.MESHES["gpu-8"]     # axis sizes; -1 = all remaining devices
    c.rules = common.rules(("activation_length", None))   # the default table with some entries replaced

The sharding strategy is data: `config.rules` is a table of (logical axis, mesh axes) pairs that
`oresearcher.sharding` applies to every parameter and activation. `None` means the default table,
`oresearcher.sharding.RULES`; a preset that wants another layout replaces entries with `rules(...)`, so the
whole table stays printable in workdir/config.json.
"""
from __future__ import annotations

from ml_collections import ConfigDict, config_dict

# Mesh axis sizes (data, fsdp, tensor, sequence; a missing axis is 1, one axis may be -1 = the rest).
MESHES = {
    "cpu": {"data": -1},                                   # 1 real CPU device, or the 8 fake ones of the tests
    "cpu-2x2x2": {"data": 2, "fsdp": 2, "tensor": 2},      # every parallelism kind on 8 fake CPU devices
    "gpu-8": {"fsdp": 8},                                  # one 8xH100 host: FSDP (ZeRO-3 like) over NVLink
    "gpu-8x8": {"data": 8, "fsdp": 8},                     # 8 hosts: FSDP inside a host, data parallel across
    "v5e-256": {"data": 4, "fsdp": 64},                    # TPU v5e-256: FSDP over the ICI, data over DCN
    "v5p-128": {"fsdp": 64, "tensor": 1, "sequence": 1},   # TPU v5p-128 (64 chips x 2 cores seen as 64 devices)
    "v5p-256": {"data": 2, "fsdp": 64, "tensor": 1},       # TPU v5p-256: two v5p-128 slices, data parallel
    "v6e-256": {"data": 1, "fsdp": 64, "tensor": 4},       # TPU v6e-256: FSDP x 4-way tensor parallel
    # Context parallel (64k-128k-token rows): `sequence` splits every row's tokens (ring attention); use with
    # rules(*CONTEXT_PARALLEL) so parameters and Adam moments are split over fsdp x sequence devices too.
    "gpu-8-cp2": {"fsdp": 4, "sequence": 2},               # one 8xH100 host, rows split over 2 GPUs
    "gpu-8x2": {"data": 2, "fsdp": 8},                     # 2 hosts x 8 GPUs (jax.distributed), data across hosts
    "v5e-256-cp4": {"fsdp": 64, "sequence": 4},            # TPU v5e-256 (16 GiB chips)
    "v5p-128-cp4": {"fsdp": 16, "sequence": 4},            # TPU v5p-128 (64 chips)
    "v6e-256-cp16": {"fsdp": 16, "sequence": 16},          # TPU v6e-256 (32 GiB chips; its 16x16 torus takes 16s)
}

# Parameters (and so gradients and Adam moments) sharded over fsdp x sequence: with context parallelism the
# `sequence` devices would otherwise each hold a full fsdp shard. common.rules(*CONTEXT_PARALLEL).
CONTEXT_PARALLEL = (("embed", ("fsdp", "sequence")),)


def rules(*overrides: tuple[str, object]) -> tuple[tuple[str, object], ...]:
    """The default rules table (oresearcher.sharding.RULES) with `overrides` replacing entries by logical name."""
    from oresearcher.sharding import RULES  # imported here: loading a config must not need JAX before it is used

    table = dict(RULES)
    for name, axes in overrides:
        if name not in table:
            raise KeyError(f"rules override {name!r}: no such logical axis; known axes: {sorted(table)}")
        table[name] = axes
    return tuple(table.items())


def base_config() -> ConfigDict:
    """Keys shared by every stage (SFT, RL). Each stage's config adds its own."""
    c = ConfigDict()
    c.stage = ""                 # "sft" | "rl": what `python -m oresearcher.train` runs
    c.workdir = "/tmp/oresearcher/run"  # config.json, metrics.jsonl, TensorBoard events, checkpoints/
    c.seed = 0
    c.total_steps = 100
    c.log_every = 10             # metrics.jsonl gets one line (flushed) per logged step
    c.checkpoint_every = 100
    c.keep_checkpoints = 2       # older checkpoints are deleted
    c.eval_every = 0             # 0 = no periodic eval
    c.model = "tiny"             # preset name of oresearcher.model.PRESETS, an HF directory, or "gguf:embedded"
    c.mesh = dict(MESHES["cpu"])
    c.rules = None               # None = oresearcher.sharding.RULES; else a table from `rules(...)`
    c.peak_flops_per_device = 0.0  # for MFU; 0 = the device kind's known peak (see oresearcher.metrics)
    c.profile = ConfigDict()
    c.profile.start_step = 0     # > 0: a JAX profiler trace of steps start_step.. under workdir/profile
    c.profile.num_steps = 0      # how many steps the trace covers (0 = no trace)
    return c


def model_overrides(**values) -> ConfigDict:
    """Every field of oresearcher.model.ModelConfig as an optional override of a preset model (None = the preset's
    own), so --config.model_overrides.FIELD=VALUE works for any field; `values` sets some of them."""
    import dataclasses
    import typing

    from oresearcher.model.config import ModelConfig  # the fields themselves, so this list never goes stale

    hints = typing.get_type_hints(ModelConfig)
    c = ConfigDict()
    for field in dataclasses.fields(ModelConfig):
        kind = hints[field.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is not None and args:      # X | None
            kind = args[0]
        kind = typing.get_origin(kind) or kind
        c[field.name] = config_dict.placeholder(dict if kind not in (int, float, bool, str) else kind)
    c.update(values)
    return c

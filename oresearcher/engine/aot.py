"""The rollout engine's programs, compiled ahead of time for an RL preset's target (oresearcher.aot).

The engine (core.py) runs two programs per step: `_prefill_rows` (a chunk of pending tokens for some slots) and
`_decode_chunk` (a chunk of tokens for every slot). Both are compiled here exactly as the engine jits them, with
abstract arrays: the weight copy in the inference layout (layout.py), the dense KV cache of the preset's slots
(rollout.slots, or questions_per_step x group_size when 0) at its longest (rollout.max_tokens: the cache the
engine grows to when an episode reaches the limit), and the largest prefill the engine makes (every slot
pending, rollout.prefill_chunk tokens each: what the first step of a rollout does).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from oresearcher import sampler as sampler_lib
from oresearcher import sharding
from oresearcher.engine import core, layout


@dataclasses.dataclass
class EnginePrograms:
    plan: layout.Plan
    slots: int
    cache_len: int
    resident: int          # bytes per device the engine holds between programs: weight copy + cache + logits
    weights: int           # of which the weight copy
    cache: int             # of which the KV cache
    prefill: tuple         # (fn, args, kwargs, description)
    decode: tuple


def _per_device(tree) -> int:
    """Bytes of the largest shard set one device holds of every array in `tree` (ShapeDtypeStructs)."""
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
        total += int(np.prod(shape)) * jnp.dtype(a.dtype).itemsize
    return total


def _stop_states(stops) -> int:
    """Rows of the stop table (sampler.stop_table): the stop strings' trie nodes plus MATCH."""
    return len({s.encode()[:i] for s in stops for i in range(len(s.encode()) + 1)}) + 1


def build(config, model_cfg, mesh) -> EnginePrograms:
    """The engine's prefill and decode programs for an RL config on `mesh` (the trainer's: its devices)."""
    from flax import nnx

    from oresearcher.model import Decoder

    rollout = config.rollout
    slots = int(rollout.get("slots", 0)) or int(config.questions_per_step) * int(rollout.group_size)
    if str(rollout.get("kv", "dense")) != "dense":
        raise ValueError(f"rollout.kv={rollout.kv!r}: ahead-of-time compilation covers the dense cache (its "
                         f"worst case, every slot at rollout.max_tokens, is what a paged pool holds at most)")
    plan = layout.make_plan(model_cfg, list(mesh.devices.flat), slots=slots, tensor=int(rollout.get("tensor", 0)))
    if slots % plan.data:
        raise ValueError(f"rollout.slots={slots} does not split over the inference layout's data axis "
                         f"({plan.data}); use a multiple of it")
    model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    model.set_sharding(plan.mesh, plan.rules)
    graphdef, state = nnx.split(model)          # the training parameters: passed, never read (pruned by jit)
    weights = layout.abstract_weights(model_cfg, plan)
    placed = layout.Placed(model_cfg, plan.mesh, plan.rules)
    max_len = int(rollout.max_tokens)
    cache_len = sampler_lib._window(max_len, max_len) + sampler_lib._spare(slots)
    cache = jax.eval_shape(lambda: sampler_lib.init_cache(placed, slots, cache_len))

    def on(tree, axes_of):
        """tree's ShapeDtypeStructs placed per the plan (axes_of(shape) -> logical axes)."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.logical_sharding(
            axes_of(a), plan.mesh, plan.rules, a.shape)), tree)

    kv_axes = ("cache_batch", "cache_kv_heads", "cache_length", "head_dim")
    cache = on(cache, lambda a: kv_axes if a.ndim == 4 else ("cache_batch", "cache_length"))
    v = model_cfg.vocab_size
    logits = on(jax.ShapeDtypeStruct((slots, v), jnp.float32), lambda a: ("activation_batch", "activation_vocab"))
    rep = NamedSharding(plan.mesh, PartitionSpec())
    s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rep)
    # prefill: every slot pending, a whole prefill chunk each (rows padded as the engine pads them)
    chunk = int(rollout.get("prefill_chunk", 512))
    rows = plan.rows(core._quarters(slots, slots, 1))
    prefill_args = (graphdef, state, weights, cache, logits, s((rows,), jnp.int32), s((rows, chunk), jnp.int32),
                    s((rows, chunk), jnp.int32), s((rows,), jnp.int32), s((rows,), jnp.bool_))
    # decode: a chunk of tokens for every slot
    steps = int(rollout.get("chunk", 16))
    use_filter = float(rollout.temperature) > 0 and (float(rollout.top_p) < 1.0 or int(rollout.top_k) > 0)
    table = s((sampler_lib._bucket(_stop_states(sampler_lib.STOP_STRINGS), 8), v), jnp.int32)   # stops.py's rows
    decode_args = (graphdef, state, weights, cache, logits, s((slots,), jnp.int32), s((slots,), jnp.bool_),
                   s((slots,), jnp.int32), s((slots,), jnp.int32), s((slots,), jnp.uint32), s((slots,), jnp.int32),
                   s((slots,), jnp.float32), s((slots,), jnp.float32), s((slots,), jnp.int32), table,
                   s((v,), jnp.bool_))
    w_bytes, c_bytes = _per_device(weights), _per_device(cache)
    return EnginePrograms(
        plan, slots, cache_len, w_bytes + c_bytes + _per_device(logits), w_bytes, c_bytes,
        (core._prefill_rows, prefill_args, {"window": cache_len - sampler_lib._spare(slots)},
         f"{rows} rows x {chunk} tokens into the cache"),
        (core._decode_chunk, decode_args, {"steps": steps, "use_filter": use_filter,
                                           "window": cache_len - sampler_lib._spare(slots)},
         f"{slots} slots x {steps} tokens"))


def compile_program(program, donate=(3, 4)):
    """Lower and compile one (fn, args, kwargs, description) as the engine jits it (cache and logits donated)."""
    fn, args, kwargs, _ = program
    jitted = jax.jit(fn, static_argnums=0, donate_argnums=donate, static_argnames=tuple(kwargs))
    return jitted.lower(*args, **kwargs).compile()

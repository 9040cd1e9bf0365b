"""The inference layout: how the engine (and the Sampler) hold the weights and the KV cache on a mesh.

Training keeps fp32 parameters FSDP-sharded over the model dimension: right for a step that reads every weight
once per many thousand tokens, wrong for decoding, which reads every weight once per token. Decoding from that
layout makes XLA all-gather each layer's weights in the loop (or hoist the gathers and hold an unsharded fp32
copy of all layers on every device). Decoding wants Megatron-style tensor parallelism instead:

    tensor  attention heads (wq/wk/wv over heads, wo over its input heads), the MLP hidden (w_gate/w_up over
            their outputs, w_down over its input) and the vocabulary (embedding and unembedding): each device
            holds 1/tensor of every layer, and a layer costs two all-reduces of the [rows, D] activations;
    data    the engine's slots (the cache batch) over the remaining devices: each group of `tensor` devices
            decodes its own slots;
    fsdp    (reused as the name of a replica axis) what is left when the slots do not divide over the rest: the
            same slots computed again, stated rather than silently dropped.

KV heads follow the tensor axis when they divide it; when they do not, wk/wv, their activations and the cache's
heads are replicated over it (explicitly, in the rules below). The copy is made in the compute dtype (bf16 on
accelerators), once per policy version (Sampler.weights keeps it until the parameters change), one layer at a
time so no device ever holds more than one unsharded layer while resharding, and never all layers.

The layout is a mesh over the model's own devices (reshaped: data x fsdp x tensor, tensor innermost so a tensor
group is neighbouring devices) and a rules table; the programs' activation constraints and the cache placement
read the same table (the model view of `view`), so weights, activations and cache agree.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from oresearcher import sharding


@dataclasses.dataclass(frozen=True)
class Plan:
    """An inference layout: a mesh of the model's devices and the rules that place weights, activations, cache."""
    mesh: Mesh
    rules: tuple
    dtype: str              # the weight copy's dtype: the model's compute dtype

    @property
    def data(self) -> int:
        return self.mesh.shape["data"]

    @property
    def tensor(self) -> int:
        return self.mesh.shape["tensor"]

    def rows(self, n: int) -> int:
        """n rounded up to a multiple of the data axis: every batch of the programs splits over it."""
        return -(-n // self.data) * self.data

    def describe(self) -> str:
        kv = dict(self.rules)["kv_heads"]
        return (f"tensor {self.tensor} (heads, MLP, vocabulary; KV heads {'split' if kv else 'replicated'}) x "
                f"data {self.data} (slots)" + (f" x {self.mesh.shape['fsdp']} replicas" if self.mesh.shape['fsdp']
                                              > 1 else "") + f", weights {self.dtype}")


def auto_tensor(cfg, devices: int) -> int:
    """The largest divisor of `devices` that divides the query heads, the KV heads and the MLP hidden: every
    weight splits, and the cache is split over heads rather than copied (72B: 64 heads, 8 KV heads -> 8)."""
    width = math.gcd(math.gcd(cfg.num_heads, cfg.num_kv_heads), cfg.intermediate_size)
    return max(t for t in range(1, devices + 1) if devices % t == 0 and width % t == 0)


def make_plan(cfg, devices, *, slots: int = 0, tensor: int = 0) -> Plan:
    """The layout for `cfg` on `devices` (a flat list, in the training mesh's order). tensor: the tensor axis
    (0 = auto_tensor); it must divide the devices, the query heads and the MLP hidden. slots: the cache batch
    (0 = any): the data axis is the largest divisor of devices / tensor that divides it."""
    n = len(devices)
    tensor = tensor or auto_tensor(cfg, n)
    if n % tensor or cfg.num_heads % tensor or cfg.intermediate_size % tensor:
        raise ValueError(f"inference layout: tensor={tensor} must divide the devices ({n}), the query heads "
                         f"({cfg.num_heads}) and the MLP hidden ({cfg.intermediate_size}); pick a common divisor "
                         f"(0 = {auto_tensor(cfg, n)}, the largest that also divides the KV heads)")
    rest = n // tensor
    data = math.gcd(rest, slots) if slots else rest
    mesh = Mesh(np.asarray(devices).reshape(data, rest // data, tensor, 1), sharding.MESH_AXES)
    kv = "tensor" if cfg.num_kv_heads % tensor == 0 else None
    vocab = "tensor" if cfg.vocab_size % tensor == 0 else None
    rules = (
        ("activation_batch", "data"), ("activation_length", None), ("activation_embed", None),
        ("activation_heads", "tensor"), ("activation_kv_heads", kv), ("activation_head_dim", None),
        ("activation_mlp", "tensor"), ("activation_vocab", vocab),
        ("embed", None), ("vocab", vocab), ("mlp", "tensor"), ("q_heads", "tensor"), ("kv_heads", kv),
        ("head_dim", None), ("layers", None), ("norm", None),
        ("cache_batch", "data"), ("cache_length", None), ("cache_kv_heads", kv),
    )
    return Plan(mesh, rules, str(jnp.dtype(cfg.compute_dtype)))


def plan_for(model, *, slots: int = 0, tensor: int = 0) -> Plan | None:
    """The layout for a model placed on a mesh of more than one device; None on one device (the CPU path)."""
    if model.mesh is None or model.mesh.size == 1:
        return None
    return make_plan(model.cfg, list(model.mesh.devices.flat), slots=slots, tensor=tensor)


@dataclasses.dataclass(frozen=True)
class Placed:
    """What init_cache / paged.init_pool read of a model: its config and where its arrays go."""
    cfg: object
    mesh: Mesh
    rules: tuple


def placed(model, plan: Plan | None):
    return model if plan is None else Placed(model.cfg, plan.mesh, plan.rules)


def view(model, plan: Plan | None):
    """(graphdef, state) of the model whose activation constraints follow the plan's mesh and rules: a second
    Python object over the same arrays (nothing is copied); the training model is left as it is."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    if plan is None:
        return graphdef, state
    other = nnx.merge(graphdef, state)
    other.set_sharding(plan.mesh, plan.rules)
    return nnx.split(other)


# ------------------------------------------------------------------------------------------------ weights
def _layer_axes(cfg) -> dict:
    from oresearcher.model.decoder import _layer_params
    return {name: axes for name, (_, axes, _) in _layer_params(cfg).items()}


def shardings(cfg, plan: Plan) -> dict:
    """NamedShardings of the weight copy: {"layers": one dict per layer, "embed" [V, D], "final_norm" [D],
    "head" [D, V] (untied models; None when tied: the embedding unembeds)}."""
    axes = _layer_axes(cfg)
    from oresearcher.model.decoder import _layer_params
    shapes = {name: shape for name, (shape, _, _) in _layer_params(cfg).items()}
    one = lambda a, shape: sharding.logical_sharding(a, plan.mesh, plan.rules, shape)
    layer = {name: one(axes[name], shapes[name]) for name in axes}
    v, d = cfg.vocab_size, cfg.hidden_size
    return {"layers": tuple(dict(layer) for _ in range(cfg.num_layers)),
            "embed": one(("vocab", "embed"), (v, d)), "final_norm": one(("norm",), (d,)),
            "head": None if cfg.tie_embeddings else one(("embed", "vocab"), (d, v))}


def abstract_weights(cfg, plan: Plan) -> dict:
    """ShapeDtypeStructs of the weight copy (ahead-of-time compilation)."""
    from oresearcher.model.decoder import _layer_params
    dtype = jnp.dtype(plan.dtype)
    sh = shardings(cfg, plan)
    shapes = {name: shape for name, (shape, _, _) in _layer_params(cfg).items()}
    s = lambda shape, where: jax.ShapeDtypeStruct(shape, dtype, sharding=where)
    v, d = cfg.vocab_size, cfg.hidden_size
    return {"layers": tuple({n: s(shapes[n], w) for n, w in layer.items()} for layer in sh["layers"]),
            "embed": s((v, d), sh["embed"]), "final_norm": s((d,), sh["final_norm"]),
            "head": None if sh["head"] is None else s((d, v), sh["head"])}


class Copier:
    """Makes the weight copy from the training parameters: one program per layer (the stacked arrays and a
    layer index in, that layer in the plan's dtype and shardings out) and one for the rest."""

    def __init__(self, cfg, plan: Plan):
        self.cfg, self.plan = cfg, plan
        sh = shardings(cfg, plan)
        dtype = jnp.dtype(plan.dtype)
        cast = lambda a: a.astype(dtype)
        self._layer = jax.jit(lambda stacked, i: jax.tree.map(lambda a: cast(a[i]), stacked),
                              out_shardings=sh["layers"][0])
        self._rest = jax.jit(lambda embed, norm, head: (cast(embed), cast(norm), None if head is None else cast(head)),
                             out_shardings=(sh["embed"], sh["final_norm"], sh["head"]))

    def __call__(self, stacked: dict, embed, final_norm, lm_head) -> dict:
        layers = tuple(self._layer(stacked, jnp.int32(i)) for i in range(self.cfg.num_layers))
        embed, final_norm, head = self._rest(embed, final_norm, lm_head)
        return {"layers": layers, "embed": embed, "final_norm": final_norm, "head": head}

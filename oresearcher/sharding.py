"""Mesh, logical-axis rules, and the two ways arrays get a sharding: placing params, constraining activations.

Every parameter and every large activation carries *logical* axis names ("embed", "mlp", "activation_batch",
...). A rules table maps each logical name to mesh axes; the sharding strategy is that table, not code:

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})       # axes data, fsdp, tensor, sequence
    model = shard_model(model, mesh, RULES)                       # params placed per their logical axes
    y = constrain(x, ("activation_batch", "activation_length", "activation_embed"))   # inside jit

A mesh axis that does not divide an array dimension is an error (IndivisibleAxisError) naming the axis, the
dimension and the mesh: dropping it would replicate that dimension over the axis, and every device would then
hold (or compute) the whole of it, e.g. a microbatch of 4 rows on an fsdp axis of 8 computed 8 times over, or
SmolLM2's 3 KV heads on a tensor axis of 2 copied to both devices. The one exception is a dimension of size 1 (a
single row, the sampler's shared prompt prefix): there is nothing to split, and it is replicated. Constraints are
applied whenever a mesh is known (the model's, or the one set with `jax.set_mesh`), CPU included; with no mesh
there is nothing to constrain against and `constrain` returns its input.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated). First match wins.
RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # parameters: FSDP over the model dimension, tensor parallel over heads / MLP width / vocabulary
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # KV cache [layers, batch, length, kv_heads, head_dim]
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", "sequence"),
    ("cache_kv_heads", "tensor"),
)


def make_mesh(shape: Mapping[str, int] | Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor, sequence), all AxisType.Auto.

    `shape` maps axis -> size (a dict or an ml_collections ConfigDict); missing axes get size 1 and one axis may
    be -1 (all remaining devices). The product must equal the number of devices used. On a multi-host job call
    `jax.distributed.initialize()` first; `jax.devices()` then spans every host.
    """
    sizes = {k: int(v) for k, v in dict(shape).items()}
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh shape {sizes}: unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    devices = list(devices if devices is not None else jax.devices())
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh shape {sizes}: at most one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"mesh shape {sizes}: {len(devices)} devices are not divisible by {known}")
        sizes[free[0]] = len(devices) // known
    dims = tuple(sizes.get(a, 1) for a in MESH_AXES)
    if math.prod(dims) != len(devices):
        raise ValueError(f"mesh shape {sizes} needs {math.prod(dims)} devices but {len(devices)} are available; "
                         f"make the sizes multiply to {len(devices)} (or use -1 for one axis)")
    return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _mesh_axes_for(name: str | None, rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    raise KeyError(f"logical axis {name!r} has no entry in the sharding rules; add ({name!r}, <mesh axes>) to them")


class IndivisibleAxisError(ValueError):
    """A mesh axis does not divide the array dimension the rules map onto it."""


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh | Any, rules=None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for logical axes. With `shape`, a mesh axis that does not divide its dimension raises
    IndivisibleAxisError (a dimension of size 1 is replicated); a mesh axis is used at most once per array (later
    dimensions lose it, by design: e.g. ("fsdp", "sequence") parameters under context parallelism)."""
    rules = RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        axes = []
        size = 1
        for ax in _mesh_axes_for(name, rules):
            if ax in used or ax not in mesh.shape or mesh.shape[ax] == 1:
                continue
            if shape is not None and shape[dim] == 1:
                break
            if shape is not None and shape[dim] % (size * mesh.shape[ax]):
                raise IndivisibleAxisError(
                    f"mesh axis {ax!r} (size {mesh.shape[ax]}) does not divide dimension {dim} ({name!r}, size "
                    f"{shape[dim]}) of an array of shape {tuple(shape)}"
                    + (f" (already split {size} ways over {axes})" if axes else "")
                    + f" on mesh {dict(mesh.shape)}; make that dimension a multiple of "
                    f"{size * mesh.shape[ax]} (e.g. the batch or microbatch rows), or change the mesh or the rules "
                    f"(map {name!r} to other mesh axes or None)")
            axes.append(ax)
            size *= mesh.shape[ax]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def logical_sharding(logical_axes: Sequence[str | None], mesh: Mesh, rules=None,
                     shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, rules, shape))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], mesh: Mesh | None = None, rules=None) -> jax.Array:
    """with_sharding_constraint by logical axes, against `mesh` or else the mesh set by `jax.set_mesh`."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return x
        spec = logical_to_spec(logical_axes, mesh, rules, x.shape)
        return jax.lax.with_sharding_constraint(x, spec)
    return jax.lax.with_sharding_constraint(x, logical_sharding(logical_axes, mesh, rules, x.shape))


def param_shardings(state, mesh: Mesh, rules=None):
    """The NamedSharding of every Variable in an nnx State, from its `logical_axes` metadata."""
    from flax import nnx

    def one(var):
        axes = var.get_metadata().get("logical_axes")
        shape = var.shape if hasattr(var, "shape") else var[...].shape
        if axes is None:
            return NamedSharding(mesh, PartitionSpec())
        return logical_sharding(axes, mesh, rules, shape)

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def shard_model(model, mesh: Mesh, rules=None):
    """Place every parameter of an NNX model per its logical axes; the model also remembers (mesh, rules) so its
    activation constraints use the same table. Returns the model (updated in place)."""
    from flax import nnx

    rules = RULES if rules is None else tuple(tuple(r) for r in rules)
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    placed = jax.tree.map(lambda v, s: jax.device_put(v[...], s), state, shardings,
                          is_leaf=lambda v: isinstance(v, nnx.Variable))
    nnx.update(model, placed)
    if hasattr(model, "set_sharding"):
        model.set_sharding(mesh, rules)
    return model


def is_fully_replicated(x: jax.Array) -> bool:
    return x.sharding.is_fully_replicated

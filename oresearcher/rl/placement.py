"""Where GRPO's rollouts run, and the copy of the policy they run on (config.placement).

    colocated   the engine and the trainer share the devices of config.mesh. One host, synchronous: the rollouts
                run on the policy itself; asynchronous (max_staleness >= 1) or multi-host: on a copy on this
                host's devices (multihost.host_model), refreshed between rollouts.
    split       the last `rollout_devices` devices run the engine, the others train (config.mesh is laid over
                those): generation never waits for the update's compute or memory, and the weights cross to the
                rollout devices once per policy version. One host.

`Placement.refresh(copy, model)` brings the rollout copy to the trainer's parameters (a device-to-device copy when
split); the trainer calls it between rollouts, never while one runs.
"""
from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh

from oresearcher import multihost, sharding

KINDS = ("colocated", "split")


@dataclasses.dataclass(frozen=True)
class Placement:
    kind: str
    mesh: Mesh              # the trainer's
    rollout_mesh: Mesh      # where the rollouts run (this host's block of `mesh` when colocated)
    own: bool               # the rollouts run on arrays of their own (never the trainer's)

    def rollout_model(self, model):
        """The model the rollouts run on: the policy itself, or a copy placed on the rollout devices."""
        if self.kind == "colocated":
            return multihost.host_model(model, self.mesh, own=self.own)
        from flax import nnx
        copy = nnx.clone(model)                     # a second module; shard_model gives it its own arrays
        return sharding.shard_model(copy, self.rollout_mesh, model.rules)

    def refresh(self, copy, model) -> None:
        """The rollout copy's parameters set to the trainer's (nothing when the rollouts run on the policy)."""
        if self.kind == "colocated":
            multihost.refresh_host_model(copy, model, self.mesh, own=self.own)
            return
        from flax import nnx
        params = nnx.state(model, nnx.Param)
        shardings = sharding.param_shardings(params, self.rollout_mesh, model.rules)
        nnx.update(copy, jax.tree.map(lambda v, s: jax.device_put(v[...], s), params, shardings,
                                      is_leaf=lambda v: isinstance(v, nnx.Variable)))


def make(config) -> Placement:
    """The placement of an RL config: placement, rollout_devices, mesh, max_staleness."""
    kind = str(config.get("placement", "colocated"))
    asynchronous = int(config.get("max_staleness", 0)) > 0
    if kind == "colocated":
        mesh = sharding.make_mesh(dict(config.mesh))
        return Placement(kind, mesh, multihost.host_mesh(mesh), own=asynchronous)
    if kind != "split":
        raise ValueError(f"placement={kind!r}: choose one of {KINDS}")
    devices, n = jax.devices(), int(config.get("rollout_devices", 0))
    if jax.process_count() > 1:
        raise ValueError("placement='split' runs on one host; on several, use placement='colocated' (each host "
                         "runs its share of the rollouts on its own devices)")
    if not 0 < n < len(devices):
        raise ValueError(f"placement='split' needs rollout_devices between 1 and {len(devices) - 1} (this host "
                         f"has {len(devices)} devices); got {n}")
    mesh = sharding.make_mesh(dict(config.mesh), devices=devices[:-n])
    # the copy is sharded over the rollout devices (fsdp); the engine lays out its own inference copy from it
    rollout = sharding.make_mesh({"fsdp": n}, devices=devices[-n:])
    return Placement(kind, mesh, rollout, own=True)

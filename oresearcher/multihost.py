"""What the trainers need when several processes form one JAX program (`jax.distributed.initialize()`).

    any_process(flag)          True on every process when `flag` is True on any one (a stop request)
    gather_objects(obj)        [obj of process 0, obj of process 1, ...] on every process (picklable objects)
    broadcast_object(obj)      process 0's obj on every process
    barrier(name)              every process waits here for the others
    host_mesh(mesh)            the block of `mesh` on this process's own devices (same axis names)
    to_host(tree, mesh, host)  global arrays on `mesh` -> copies on the host mesh (what a host-local rollout reads)

With one process every function is the identity (no collective runs). Objects travel as pickled bytes inside a
uint8 array through `multihost_utils`, so they ride the collectives JAX already set up (gloo on CPU, NCCL or ICI
on accelerators) and need no side channel. Every process must make the same calls in the same order.
"""
from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def is_primary() -> bool:
    """The process that writes shared files (metrics, episodes, exports) and prints."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather_objects(obj: Any) -> list:
    """Every process's `obj`, in process order, on every process."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
    padded = np.zeros((int(sizes.max()),), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))        # [processes, longest]
    return [pickle.loads(rows[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def broadcast_object(obj: Any) -> Any:
    """Process 0's `obj` (the others' argument is ignored) on every process."""
    if jax.process_count() == 1:
        return obj
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8) if is_primary() else None
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size if data is not None else 0)))
    buf = np.zeros((size,), np.uint8)
    if data is not None:
        buf[:] = data
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


# ------------------------------------------------------------------------------------ host-local copies
def host_mesh(mesh: Mesh) -> Mesh:
    """The sub-mesh of `mesh` on this process's devices, with the same axis names. The processes must tile the
    mesh in equal blocks (jax.make_mesh lays processes along the outer axes: data across hosts, fsdp inside)."""
    if jax.process_count() == 1:
        return mesh
    owner = np.vectorize(lambda d: d.process_index)(mesh.devices)
    mine = np.argwhere(owner == jax.process_index())
    lo, hi = mine.min(axis=0), mine.max(axis=0) + 1
    block = mesh.devices[tuple(slice(a, b) for a, b in zip(lo, hi))]
    if block.size != len(mine) or block.size != jax.local_device_count():
        raise ValueError(f"mesh {dict(mesh.shape)}: process {jax.process_index()}'s devices do not form one block "
                         f"of it, so it cannot run on them alone; order the mesh axes so that the processes "
                         f"split the outer ones (e.g. data across hosts, fsdp inside a host)")
    return Mesh(block, mesh.axis_names, axis_types=mesh.axis_types)


def _host_spec(spec: PartitionSpec, mesh: Mesh, host: Mesh) -> PartitionSpec:
    """`spec` without the axes that span processes (the host mesh is smaller along them)."""
    local = lambda a: a is not None and host.shape[a] == mesh.shape[a]

    def keep(entry):
        if entry is None:
            return None
        axes = tuple(a for a in ((entry,) if isinstance(entry, str) else entry) if local(a))
        return None if not axes else axes[0] if len(axes) == 1 else axes
    return PartitionSpec(*(keep(e) for e in spec))


def to_host(tree, mesh: Mesh, host: Mesh):
    """Copies of the global arrays of `tree` (on `mesh`) on the host mesh: each array is first gathered over
    the axes that span processes (one collective; free when it is already replicated across them, as
    data-parallel parameters are), then this process's shards become the host array without a copy."""
    if host is mesh:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    specs = [_host_spec(x.sharding.spec if isinstance(x.sharding, NamedSharding) else PartitionSpec(), mesh, host)
             for x in leaves]
    gathered = jax.jit(lambda xs: xs, out_shardings=[NamedSharding(mesh, s) for s in specs])(leaves)
    out = []
    for x, spec in zip(gathered, specs):
        target = NamedSharding(host, spec)
        by_device = {s.device: s.data for s in x.addressable_shards}
        out.append(jax.make_array_from_single_device_arrays(
            x.shape, target, [by_device[d] for d in target.addressable_devices_indices_map(x.shape)]))
    return jax.tree.unflatten(treedef, out)

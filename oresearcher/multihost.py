"""What the trainers need when several processes form one JAX program (`jax.distributed.initialize()`).

    any_process(flag)          True on every process when `flag` is True on any one (a stop request)
    gather_objects(obj)        [obj of process 0, obj of process 1, ...] on every process (picklable objects)
    broadcast_object(obj)      process 0's obj on every process
    barrier(name)              every process waits here for the others
    process_share(n)           this process's contiguous share of n items (its questions of a step)
    host_mesh(mesh)            the block of `mesh` on this process's own devices (same axis names)
    to_host(tree, mesh, host)  global arrays on `mesh` -> copies on the host mesh
    host_model(model, mesh)    a copy of a model on this process's devices (what its share of the rollouts runs on)
    refresh_host_model(...)    that copy brought up to date after an update

With one process every function is the identity (nothing is exchanged). Between processes, objects travel as
pickled bytes through the key-value store of JAX's coordination service (the one `jax.distributed.initialize`
starts), not through device collectives: a host may wait minutes here for another (process 0 starting the synth
service, a host whose rollouts run longer), and a device collective on CPU (gloo) gives up after 30 s. A host
that dies is noticed by the coordination service's heartbeats, which end the others' waits with an error. Every
process must make the same calls in the same order.
"""
from __future__ import annotations

import collections
import itertools
import pickle
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_WAIT_MS = 24 * 3600 * 1000          # how long a host waits for the others; a dead host ends the wait sooner
_CHUNK = 1 << 20                      # the coordination service's messages stay under gRPC's 4 MiB default
# the same sequence on every process names each exchange; one sequence per channel, so that a thread that
# exchanges on its own channel (asynchronous RL's rollouts) never interleaves with the main thread's calls
_calls: dict[str, itertools.count] = collections.defaultdict(itertools.count)


def _client():
    from jax._src import distributed  # the coordination service client; no public accessor exists yet
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several JAX processes but no distributed client: call jax.distributed.initialize() "
                           "first (python -m oresearcher.train does it from the JAX_* environment variables)")
    return client


def is_primary() -> bool:
    """The process that writes shared files (metrics, episodes, exports) and prints."""
    return jax.process_index() == 0


def _put(client, key: str, data: bytes) -> None:
    chunks = [data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
    for i, c in enumerate(chunks):
        client.key_value_set_bytes(f"{key}/{i}", c)
    client.key_value_set(f"{key}/n", str(len(chunks)))


def _get(client, key: str) -> bytes:
    n = int(client.blocking_key_value_get(f"{key}/n", _WAIT_MS))
    return b"".join(client.blocking_key_value_get_bytes(f"{key}/{i}", _WAIT_MS) for i in range(n))


def _exchange(obj: Any, senders, channel: str = "main") -> list:
    """The objects of the processes in `senders` (each sends its `obj`), on every process."""
    client, me, call = _client(), jax.process_index(), next(_calls[channel])
    prefix = f"oresearcher/exchange/{channel}/{call}"
    if me in senders:
        _put(client, f"{prefix}/{me}", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    out = [pickle.loads(_get(client, f"{prefix}/{p}")) for p in senders]
    client.wait_at_barrier(f"{prefix}/read", _WAIT_MS)      # everyone has read: the keys can go
    if me in senders:
        client.key_value_delete(f"{prefix}/{me}")
    return out


def gather_objects(obj: Any, channel: str = "main") -> list:
    """Every process's `obj` (picklable), in process order, on every process. Calls on one channel must come
    from one thread at a time, in the same order on every process."""
    if jax.process_count() == 1:
        return [obj]
    return _exchange(obj, range(jax.process_count()), channel)


def broadcast_object(obj: Any) -> Any:
    """Process 0's `obj` (the others' argument is ignored) on every process."""
    if jax.process_count() == 1:
        return obj
    return _exchange(obj, [0])[0]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any one."""
    return any(gather_objects(bool(flag)))


def barrier(name: str) -> None:
    """Every process waits here until all have arrived."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f"oresearcher/barrier/{next(_calls['main'])}/{name}", _WAIT_MS)


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
    if not all(isinstance(x, jax.Array) for x in leaves):
        raise TypeError("to_host: every leaf must be a jax.Array on the mesh")
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


def process_share(n: int) -> range:
    """This process's contiguous share of n items (shares differ by at most one; the first processes get more)."""
    p, count = jax.process_index(), jax.process_count()
    base, extra = divmod(n, count)
    start = p * base + min(p, extra)
    return range(start, start + base + (p < extra))


def host_model(model, mesh: Mesh, *, own: bool = False):
    """A copy of the NNX `model` (sharded on the global `mesh`) that lives on this process's devices alone, for
    work each host does by itself (its share of the rollouts); the model itself when there is one process,
    unless `own`: then always arrays of its own, which the trainer's updates (donating the parameters) never
    touch, so rollouts can run on it while the trainer updates (asynchronous RL). `refresh_host_model` brings
    its parameters up to date."""
    host = host_mesh(mesh)
    if host is mesh and not own:
        return model
    from flax import nnx
    graphdef, state = nnx.split(model)
    state = to_host(state, mesh, host)
    copy = nnx.merge(graphdef, _owned(state) if own else state)
    copy.set_sharding(host, model.rules)   # its activation constraints name the host mesh
    return copy


def refresh_host_model(copy, model, mesh: Mesh, *, own: bool = False) -> None:
    if copy is model:
        return
    from flax import nnx
    params = to_host(nnx.state(model, nnx.Param), mesh, copy.mesh)
    nnx.update(copy, _owned(params) if own else params)


def _owned(tree):
    """Arrays of their own: to_host may hand back the very buffers of its input (one host, or shards that are
    already where they go), which an update that donates the parameters would delete."""
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)

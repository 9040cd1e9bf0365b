"""Attention for 64k-128k-token trajectories: memory-efficient kernels and context parallelism.

The decoder's dense attention materialises a [B, T, S] mask and [B, H, T, S] fp32 scores: at T = S = 64k that is
16 GiB of scores per head, far beyond any accelerator. This module computes the same function
(causal within a segment: token t sees token s iff s <= t and segment(s) == segment(t)) without ever holding more
than one [block, block] tile of scores per head:

    out = attention(q, k, v, segment_ids, implementation="ring", mesh=mesh, rules=rules)
    # q [B, T, H, hd], k/v [B, T, K, hd] (grouped-query: H % K == 0), segment_ids int32 [B, T] -> [B, T, H, hd]

Implementations (`ModelConfig.attention` picks one; "dense" stays in the decoder):
  "flash"      blockwise attention with an online softmax and a recomputing backward pass (the FlashAttention
               algorithm in plain JAX): O(T) memory, runs on CPU, GPU and TPU alike, and compiles ahead of time
               for all of them. Tiles wholly in the causal future are skipped.
  "allgather"  context parallelism: the sequence is split over the mesh axis `sequence`; each shard all-gathers
               K/V (and their segment ids) and runs "flash" for its own queries at their global positions.
               K/V are small under GQA (Qwen2.5-7B: 4 KV heads), so gathering them costs little memory.
  "ring"       context parallelism without the gather: K/V blocks travel around the `sequence` ring by
               `ppermute`, one hop per step, and the partial results merge through their log-sum-exp.
  "cudnn"      `jax.nn.dot_product_attention(implementation="cudnn")` on GPU: fused and causal, ~7x faster than
               "flash" on an H100 (32k tokens, fwd+bwd). Packed rows pass their segment mask, [B, 1, T, T] bools,
               so it suits rows of one trajectory. Needs a GPU to compile.
  "splash"     TPU Pallas splash attention (causal mask + segment ids, computed in-kernel).

Softmax statistics are fp32; scores use fp32 accumulation. Gradients come from a custom VJP that recomputes each
score tile from the saved log-sum-exp, so the backward pass holds no [T, S] tensor either.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from oresearcher import sharding

Array = jax.Array
IMPLEMENTATIONS = ("dense", "flash", "allgather", "ring", "cudnn", "splash")
_NEG = -1e30  # "minus infinity" that stays finite, so fully masked tiles produce zeros rather than NaN


# ------------------------------------------------------------------------------------ blockwise (flash) core
def _block_size(length: int, block: int) -> int:
    """Largest divisor of `length` that is <= block (tiles must cover the axis exactly)."""
    block = max(1, min(block, length))
    while length % block:
        block -= 1
    return block


def _repeat(lo, hi, body, init):
    """for i in range(lo, hi): carry = body(i, carry), as a while loop even when the bounds are static.

    A scan would be differentiable, and that is the trouble: under `jax.checkpoint` JAX splits a scan into the
    part that depends only on non-differentiated inputs (here the integer masks) and the rest, and stacks the
    former's results for every step as residuals -- a [tiles, T, block] mask, i.e. T^2 memory. A while loop is
    never split; the custom VJP below supplies the gradient instead.
    """
    def step(c):
        i, carry = c
        return i + 1, body(i, carry)
    return jax.lax.while_loop(lambda c: c[0] < hi, step, (jnp.asarray(lo, jnp.int32), init))[1]


def _slice(x, start, size, axis):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _visible(q_seg, q_lo, kv_seg, kv_lo):
    """[b, 1, 1, bq, bk] bool for a query block starting at global token q_lo and a K/V tile at kv_lo:
    causal by global token index, within a segment."""
    q_idx = q_lo + jnp.arange(q_seg.shape[1], dtype=jnp.int32)
    kv_idx = kv_lo + jnp.arange(kv_seg.shape[1], dtype=jnp.int32)
    m = (q_idx[None, :, None] >= kv_idx[None, None, :]) & (q_seg[:, :, None] == kv_seg[:, None, :])
    return m[:, None, None]


def _scores(q, k_tile, scale):
    """q [b, K, G, bq, hd] . k [b, K, bk, hd] -> fp32 [b, K, G, bq, bk]."""
    return jnp.einsum("bkgtd,bksd->bkgts", q, k_tile, preferred_element_type=jnp.float32) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def flash_core(q, k, v, q_seg, kv_seg, q_start, kv_start, block_q, block_kv):
    """Blockwise attention of grouped queries against one contiguous run of keys, with its log-sum-exp.

    q [b, K, G, T, hd]; k/v [b, K, S, hd]; q_seg [b, T], kv_seg [b, S]; q_start / kv_start: int32 global token
    index of the first query / key (query t may see key s iff q_start + t >= kv_start + s, same segment).
    Returns out [b, K, G, T, hd] (q's dtype) and lse fp32 [b, K, G, T] (_NEG where a row sees no key).
    Memory: one [b, K, G, block_q, block_kv] fp32 tile at a time; K/V tiles wholly in a query block's future
    are skipped (the loop bound stops at the causal diagonal), which halves causal FLOPs.
    """
    return _flash_fwd(q, k, v, q_seg, kv_seg, q_start, kv_start, block_q, block_kv)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, q_start, kv_start, block_q, block_kv):
    b, kh, g, t, hd = q.shape
    s = k.shape[2]
    bq, bk = _block_size(t, block_q), _block_size(s, block_kv)
    scale = hd ** -0.5

    def query_block(i, carry):
        out, lse = carry
        q_i, seg_i = _slice(q, i * bq, bq, 3), _slice(q_seg, i * bq, bq, 1)
        q_lo = q_start + i * bq
        tiles = jnp.clip((q_lo + bq - 1 - kv_start) // bk + 1, 0, s // bk)  # up to the causal diagonal

        def kv_tile(j, c):
            m, l, acc = c
            k_j, v_j = _slice(k, j * bk, bk, 2), _slice(v, j * bk, bk, 2)
            vis = _visible(seg_i, q_lo, _slice(kv_seg, j * bk, bk, 1), kv_start + j * bk)
            sc = jnp.where(vis, _scores(q_i, k_j, scale), _NEG)
            m_new = jnp.maximum(m, sc.max(-1))
            p = jnp.where(vis, jnp.exp(sc - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
            return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

        init = (jnp.full((b, kh, g, bq), _NEG, jnp.float32), jnp.zeros((b, kh, g, bq), jnp.float32),
                jnp.zeros((b, kh, g, bq, hd), jnp.float32))
        m, l, acc = _repeat(0, tiles, kv_tile, init)
        seen = l > 0
        o = (acc / jnp.where(seen, l, 1.0)[..., None]).astype(q.dtype)
        ls = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), _NEG)
        return (jax.lax.dynamic_update_slice_in_dim(out, o, i * bq, axis=3),
                jax.lax.dynamic_update_slice_in_dim(lse, ls, i * bq, axis=3))

    out, lse = _repeat(0, t // bq, query_block, (jnp.zeros(q.shape, q.dtype),
                                                 jnp.full((b, kh, g, t), _NEG, jnp.float32)))
    return (out, lse), (q, k, v, q_seg, kv_seg, q_start, kv_start, out, lse)


def _flash_bwd(block_q, block_kv, res, cotangents):
    """Per tile: P = exp(S - lse), dV += P^T dO, dS = P * (dO V^T - rowsum(dO * O) + dlse), dQ += dS K, dK += dS^T Q.

    The log-sum-exp output has its own cotangent dlse (d lse / d S = P): the ring merge differentiates through it.
    """
    q, k, v, q_seg, kv_seg, q_start, kv_start, out, lse = res
    d_out, d_lse = cotangents
    b, kh, g, t, hd = q.shape
    s = k.shape[2]
    bq, bk = _block_size(t, block_q), _block_size(s, block_kv)
    scale = hd ** -0.5
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse  # [b, K, G, T]

    def kv_tile(j, carry):
        dq, dk, dv = carry
        k_j, v_j, seg_j = _slice(k, j * bk, bk, 2), _slice(v, j * bk, bk, 2), _slice(kv_seg, j * bk, bk, 1)
        kv_lo = kv_start + j * bk
        first = jnp.clip((kv_lo - q_start) // bq, 0, t // bq)  # query blocks before this tile see none of it

        def query_block(i, c):
            dq, dk_j, dv_j = c
            sl = lambda x, axis: _slice(x, i * bq, bq, axis)
            q_i, do_i = sl(q, 3), sl(d_out, 3).astype(jnp.float32)
            vis = _visible(sl(q_seg, 1), q_start + i * bq, seg_j, kv_lo)
            p = jnp.where(vis, jnp.exp(_scores(q_i, k_j, scale) - sl(lse, 3)[..., None]), 0.0)
            dv_j = dv_j + jnp.einsum("bkgts,bkgtd->bksd", p, do_i)
            dp = jnp.einsum("bkgtd,bksd->bkgts", do_i, v_j.astype(jnp.float32))
            ds = p * (dp - sl(delta, 3)[..., None]) * scale
            dq_i = sl(dq, 3) + jnp.einsum("bkgts,bksd->bkgtd", ds, k_j.astype(jnp.float32))
            dk_j = dk_j + jnp.einsum("bkgts,bkgtd->bksd", ds, q_i.astype(jnp.float32))
            return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=3), dk_j, dv_j

        zero = jnp.zeros((b, kh, bk, hd), jnp.float32)
        dq, dk_j, dv_j = _repeat(first, t // bq, query_block, (dq, zero, zero))
        return (dq, jax.lax.dynamic_update_slice_in_dim(dk, dk_j.astype(k.dtype), j * bk, axis=2),
                jax.lax.dynamic_update_slice_in_dim(dv, dv_j.astype(v.dtype), j * bk, axis=2))

    dq, dk, dv = _repeat(0, s // bk, kv_tile, (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k),
                                                jnp.zeros_like(v)))
    zeros = lambda x: np.zeros(np.shape(x), jax.dtypes.float0)  # integer inputs have no tangent
    return (dq.astype(q.dtype), dk, dv, zeros(q_seg), zeros(kv_seg), zeros(q_start), zeros(kv_start))


flash_core.defvjp(_flash_fwd, _flash_bwd)


def _group(q, num_kv_heads):
    """[b, T, H, hd] -> [b, K, G, T, hd] (the G query heads sharing a K/V head side by side)."""
    b, t, h, hd = q.shape
    return q.reshape(b, t, num_kv_heads, h // num_kv_heads, hd).transpose(0, 2, 3, 1, 4)


def _ungroup(o):
    b, kh, g, t, hd = o.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, kh * g, hd)


def flash_attention(q, k, v, segment_ids, *, block: int = 512):
    """Blockwise attention on whole (unsharded) arrays. q [B,T,H,hd], k/v [B,T,K,hd] -> [B,T,H,hd]."""
    zero = jnp.zeros((), jnp.int32)
    out, _ = flash_core(_group(q, k.shape[2]), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                        segment_ids, segment_ids, zero, zero, block, block)
    return _ungroup(out)


# ------------------------------------------------------------------------------------- context parallelism
def _merge(out_a, lse_a, out_b, lse_b):
    """Combine two softmax partials over disjoint key sets through their log-sum-exps."""
    lse = jnp.logaddexp(lse_a, lse_b)
    wa = jnp.exp(lse_a - lse)[..., None]
    wb = jnp.exp(lse_b - lse)[..., None]
    return out_a.astype(jnp.float32) * wa + out_b.astype(jnp.float32) * wb, lse


def _allgather_shard(q, k, v, seg, *, axis, block):
    """Per-shard body: local queries [b, t, H, hd] against all K/V gathered over `axis`."""
    t = q.shape[1]
    q_start = (jax.lax.axis_index(axis) * t).astype(jnp.int32)
    k_all, v_all, seg_all = (jax.lax.all_gather(x, axis, axis=1, tiled=True) for x in (k, v, seg))
    out, _ = flash_core(_group(q, k.shape[2]), k_all.transpose(0, 2, 1, 3), v_all.transpose(0, 2, 1, 3),
                        seg, seg_all, q_start, jnp.zeros((), jnp.int32), block, block)
    return _ungroup(out)


def _ring_shard(q, k, v, seg, *, axis, n, block):
    """Per-shard body: K/V blocks rotate around the ring; after n steps every query has seen every block.

    At step i this shard holds the block that started on shard (me - i) mod n. A block wholly in the future of
    every local query costs no attention FLOPs (flash_core's loop stops at the causal diagonal), only its hop.
    """
    t = q.shape[1]
    me = jax.lax.axis_index(axis)
    q_start = (me * t).astype(jnp.int32)
    qg = _group(q, k.shape[2])
    perm = [(i, (i + 1) % n) for i in range(n)]

    def step(carry, i):
        out, lse, k_cur, v_cur, seg_cur = carry
        kv_start = (((me - i) % n) * t).astype(jnp.int32)
        o_i, lse_i = flash_core(qg, k_cur.transpose(0, 2, 1, 3), v_cur.transpose(0, 2, 1, 3),
                                seg, seg_cur, q_start, kv_start, block, block)
        out, lse = _merge(out, lse, o_i, lse_i)
        k_cur, v_cur, seg_cur = (jax.lax.ppermute(x, axis, perm) for x in (k_cur, v_cur, seg_cur))
        return (out, lse, k_cur, v_cur, seg_cur), None

    init = (jnp.zeros(qg.shape, jnp.float32), jnp.full(qg.shape[:-1], _NEG, jnp.float32), k, v, seg)
    (out, _, _, _, _), _ = jax.lax.scan(step, init, jnp.arange(n))
    return _ungroup(out.astype(q.dtype))


def _sharded(q, k, v, segment_ids, *, implementation, mesh, rules, block):
    """Run one kernel per device under shard_map, with q/k/v split like the decoder's activations (batch over
    data/fsdp, heads over tensor, length over sequence). A split length needs "ring" or "allgather" ("flash" runs
    as "allgather"); the fused kernels see whole sequences only."""
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
    kv_heads = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
    q_spec = sharding.logical_to_spec(heads, mesh, rules, q.shape)
    try:
        kv_spec = sharding.logical_to_spec(kv_heads, mesh, rules, k.shape)
    except sharding.IndivisibleAxisError:
        # The tensor axis splits the query heads but not the (fewer) K/V heads: give every query head its own
        # K/V head so both split the same way (head h uses K/V head h // G either way).
        g = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        kv_spec = sharding.logical_to_spec(kv_heads, mesh, rules, k.shape)
    axis = q_spec[1]
    if axis is None:
        body = functools.partial(_local, implementation=implementation, block=block)
    elif not isinstance(axis, str):
        raise ValueError(f"attention={implementation!r}: the length axis maps to several mesh axes {axis}; "
                         f"map 'activation_length' to the single axis 'sequence' in the rules")
    elif implementation == "ring":
        body = functools.partial(_ring_shard, axis=axis, n=mesh.shape[axis], block=block)
    elif implementation in ("allgather", "flash"):
        body = functools.partial(_allgather_shard, axis=axis, block=block)
    else:
        raise ValueError(f"attention={implementation!r} needs whole sequences on each device, but the mesh splits "
                         f"the length over {axis!r} ({mesh.shape[axis]}); use attention='ring' or 'allgather'")
    seg_spec = PartitionSpec(q_spec[0], axis)
    fn = jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                       check_vma=False)
    return fn(q, k, v, segment_ids)


def _local(q, k, v, segment_ids, *, implementation, block):
    """The kernel on arrays that hold whole sequences."""
    if implementation == "cudnn":
        return _cudnn_attention(q, k, v, segment_ids)
    if implementation == "splash":
        return _splash_attention(q, k, v, segment_ids, block)
    return flash_attention(q, k, v, segment_ids, block=block)


# ---------------------------------------------------------------------------------------- fused kernels
def _cudnn_attention(q, k, v, segment_ids):
    """cuDNN fused attention (GPU). Causal in-kernel; a packed row's segment mask goes in as a mask operand."""
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, implementation="cudnn")


def _splash_attention(q, k, v, segment_ids, block):
    """TPU Pallas splash attention: one MQA kernel per K/V head (its G query heads), vmapped over batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, hd = q.shape
    kh = k.shape[2]
    g = h // kh
    blk = _block_size(t, block)
    sizes = sk.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    mask = sm.MultiHeadMask([sm.CausalMask((t, t))] * g)
    kernel = sk.make_splash_mqa_single_device(mask=mask, block_sizes=sizes)
    qg = (q * (hd ** -0.5)).reshape(b, t, kh, g, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    kk, vv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)                  # [B, K, S, hd]

    def one_row(qr, kr, vr, seg):
        ids = sk.SegmentIds(q=seg, kv=seg)
        return jax.vmap(lambda qh, kk_, vv_: kernel(qh, kk_, vv_, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(one_row)(qg, kk, vv, segment_ids)  # [B, K, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


# ------------------------------------------------------------------------------------------------ entry
def attention(q: Array, k: Array, v: Array, segment_ids: Array, *, implementation: str = "flash",
              mesh=None, rules=None, block: int = 512) -> Array:
    """Causal-within-segment grouped-query attention. q [B,T,H,hd], k/v [B,T,K,hd], segment_ids [B,T] -> [B,T,H,hd].

    `mesh`/`rules` are the decoder's (None: the mesh set by `jax.set_mesh`, if any). With a mesh every kernel runs
    per device under shard_map; "ring"/"allgather" split the length over the `sequence` axis (with no such axis
    they are "flash"). `block` is the query/key tile length of the blockwise kernels.
    """
    if implementation not in IMPLEMENTATIONS or implementation == "dense":
        raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS[1:]} "
                         f"('dense' is the decoder's own masked attention)")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: {q.shape[2]} query heads are not a multiple of {k.shape[2]} K/V heads")
    segment_ids = segment_ids.astype(jnp.int32)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or q.shape[1] != k.shape[1]:
        return _local(q, k, v, segment_ids, implementation=implementation, block=block)
    return _sharded(q, k, v, segment_ids, implementation=implementation, mesh=mesh,
                    rules=sharding.RULES if rules is None else rules, block=block)

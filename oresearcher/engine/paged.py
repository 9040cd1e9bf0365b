"""A paged KV cache: fixed-size blocks in one pool per layer, and a block table per slot.

    pool k, v: per layer [num_blocks, K, block, hd]       (block 0 is never handed out: the table's filler)
    table:     [slots, max_blocks] int32                  slot b's tokens t live in block table[b, t // block]

The pool holds the blocks of the tokens in use, not slots x max_len: a slot takes blocks as its episode grows and
gives them back when it ends, and the pool grows (doubling, one copy) only when the free blocks run out. Blocks of
a prefix shared by many prompts (the system prompt) are held once and referenced from every slot's table; a slot
only ever writes past them.

Attention of a call reads each row's first W blocks (W: the bucket of the furthest block any of its rows reaches),
gathered from the pool in the table's order, and masks slots past each token's position: it reads only blocks in
use. On accelerators a ragged paged-attention kernel would read the blocks in place; the gather is the portable
form of the same maths (the decoder's own layer function, with `kv_io`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from oresearcher import sharding


class BlockAllocator:
    """Host-side bookkeeping: free blocks, each slot's blocks, reference counts (shared prefix blocks)."""

    def __init__(self, slots: int, block: int, num_blocks: int):
        self.block = block
        self.num_blocks = num_blocks
        self.free = list(range(num_blocks - 1, 0, -1))   # block 0 is the filler
        self.refs = np.zeros((num_blocks,), np.int64)
        self.rows: list[list[int]] = [[] for _ in range(slots)]

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def missing(self, slot: int, tokens: int) -> int:
        return max(0, self.blocks_for(tokens) - len(self.rows[slot]))

    def grow_to(self, num_blocks: int) -> None:
        self.free = list(range(num_blocks - 1, self.num_blocks - 1, -1)) + self.free
        self.refs = np.concatenate([self.refs, np.zeros((num_blocks - self.num_blocks,), np.int64)])
        self.num_blocks = num_blocks

    def extend(self, slot: int, tokens: int) -> None:
        """Give `slot` blocks for its first `tokens` tokens (the caller made sure enough are free)."""
        for _ in range(self.missing(slot, tokens)):
            b = self.free.pop()
            self.refs[b] += 1
            self.rows[slot].append(b)

    def share(self, slot: int, blocks: list[int]) -> None:
        """Start `slot` (empty) with `blocks`, referenced, not copied."""
        assert not self.rows[slot], slot
        for b in blocks:
            self.refs[b] += 1
        self.rows[slot] = list(blocks)

    def release(self, slot: int) -> None:
        for b in self.rows[slot]:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free.append(b)
        self.rows[slot] = []

    def in_use(self) -> int:
        return int(np.sum(self.refs > 0))

    def table(self, rows, width: int) -> np.ndarray:
        """[len(rows), width] block ids (0 past a row's blocks; a row == number of slots is padding)."""
        out = np.zeros((len(rows), width), np.int32)
        for j, r in enumerate(rows):
            if 0 <= r < len(self.rows):
                ids = self.rows[r][:width]
                out[j, :len(ids)] = ids
        return out


def init_pool(model, num_blocks: int, block: int) -> dict:
    """{"k", "v": tuple of L arrays [num_blocks, K, block, hd]}, placed per the model's mesh (kv heads) if any."""
    cfg = model.cfg
    shape = (num_blocks, cfg.num_kv_heads, block, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    make = lambda: jnp.zeros(shape, dtype)
    if model.mesh is not None:
        where = sharding.logical_sharding((None, "cache_kv_heads", None, "head_dim"), model.mesh, model.rules, shape)
        make = lambda: jax.device_put(jnp.zeros(shape, dtype), where)
    return {"k": tuple(make() for _ in range(cfg.num_layers)), "v": tuple(make() for _ in range(cfg.num_layers))}


def grow_pool(pool: dict, num_blocks: int) -> dict:
    """The pool with zero blocks appended up to num_blocks (the old blocks keep their ids)."""
    pad = lambda a: jnp.pad(a, [(0, num_blocks - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
    return jax.tree.map(pad, pool)


def forward(model, weights, pool: dict, table, tokens, positions):
    """Hidden states [R, T, D] for tokens [R, T] at positions [R, T] of rows whose blocks are table [R, W]
    (a position < 0 or >= W * block: padding, written nowhere), and the updated pool. Token (r, t) attends to
    its row's slots s <= positions[r, t]."""
    from oresearcher.model.decoder import rope_frequencies
    from oresearcher.sampler import embed, final_norm

    cfg = model.cfg
    r, w = table.shape
    block = pool["k"][0].shape[2]
    n_blocks = pool["k"][0].shape[0]
    x = embed(model, weights, tokens)
    valid = (positions >= 0) & (positions < w * block)
    safe = jnp.where(valid, positions, 0)
    dest = jnp.where(valid, jnp.take_along_axis(table, safe // block, axis=1), n_blocks)   # n_blocks: dropped
    offset = safe % block
    slots = jnp.arange(w * block)
    mask = valid[:, :, None] & (slots[None, None, :] <= positions[:, :, None])

    def kv_io(k, v, kv):
        k_pool = kv[0].at[dest, :, offset].set(k, mode="drop")
        v_pool = kv[1].at[dest, :, offset].set(v, mode="drop")
        read = lambda p: p[table].transpose(0, 2, 1, 3, 4).reshape(r, p.shape[1], w * block, p.shape[3])
        return read(k_pool), read(v_pool), (k_pool, v_pool)

    layer = model._layer_fn(positions, mask, rope_frequencies(cfg), kv_io=kv_io)
    ks, vs = [], []
    for p, k, v in zip(weights["layers"], pool["k"], pool["v"]):
        x, (k, v) = layer(x, p, (k, v))
        ks.append(k)
        vs.append(v)
    return final_norm(model, weights, x), {"k": tuple(ks), "v": tuple(vs)}

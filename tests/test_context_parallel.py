"""Long-context attention (oresearcher/context_parallel.py) equals the decoder's dense masked attention.

Kernel level: flash / allgather / ring outputs and gradients against `decoder.attention` with the explicit
causal-within-segment mask, on meshes that split the sequence (and heads) over 8 fake CPU devices.
Model level: a tiny decoder on a 4k-token packed batch, sequence axis sharded 4 ways (x 2 data), gives the same
logits and parameter gradients as the unsharded dense model (<= 1e-4).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oresearcher import context_parallel as cp
from oresearcher import sharding
from oresearcher.model import PRESETS, Decoder
from oresearcher.model.decoder import attention as dense_attention


def _packed_segments(rng, batch, length, max_docs=4):
    """[B, T] int32 segment ids: each row a random number of documents of random lengths, ids from 1."""
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), size=rng.integers(0, max_docs), replace=False))
        for i, (s, e) in enumerate(zip([0, *cuts], [*cuts, length])):
            seg[b, s:e] = i + 1
    return seg


def _dense(q, k, v, seg):
    t = q.shape[1]
    idx = jnp.arange(t)
    mask = (idx[None, :, None] >= idx[None, None, :]) & (seg[:, :, None] == seg[:, None, :])
    return dense_attention(q, k, v, mask)


@pytest.mark.parametrize("implementation, mesh_shape", [
    ("flash", None),
    ("allgather", {"data": 2, "sequence": 4}),
    ("ring", {"data": 2, "sequence": 4}),
    ("ring", {"tensor": 2, "sequence": 4}),     # heads split too: 4 query heads / 2 K/V heads over 2
    ("allgather", {"tensor": 4, "sequence": 2}),  # 2 K/V heads cannot split 4 ways: K/V repeated per query head
])
def test_attention_matches_dense(implementation, mesh_shape):
    rng = np.random.default_rng(0)
    b, t, h, kh, hd = 2, 256, 4, 2, 16
    q, k, v, w = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                  for s in ((b, t, h, hd), (b, t, kh, hd), (b, t, kh, hd), (b, t, h, hd)))
    seg = jnp.asarray(_packed_segments(rng, b, t))
    mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None

    def ours(q, k, v):
        return cp.attention(q, k, v, seg, implementation=implementation, mesh=mesh, block=32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    want = _dense(q, k, v, seg)
    got = jax.jit(ours)(q, k, v)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    want_g = jax.grad(loss(lambda q, k, v: _dense(q, k, v, seg)), argnums=(0, 1, 2))(q, k, v)
    got_g = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got_g, want_g):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def test_ring_really_runs_on_shards():
    """The ring body sees one sequence shard per device and passes K/V with collective permutes."""
    mesh = sharding.make_mesh({"data": 2, "sequence": 4})
    q = jnp.zeros((2, 256, 4, 16))
    k = jnp.zeros((2, 256, 2, 16))
    seg = jnp.ones((2, 256), jnp.int32)
    hlo = jax.jit(lambda q, k: cp.attention(q, k, k, seg, implementation="ring", mesh=mesh)).lower(q, k).as_text()
    assert "collective_permute" in hlo and "all_gather" not in hlo
    hlo = jax.jit(lambda q, k: cp.attention(q, k, k, seg, implementation="allgather", mesh=mesh)).lower(q, k).as_text()
    assert "all_gather" in hlo


def test_unknown_implementation_names_the_choices():
    x = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="ring"):
        cp.attention(x, x, x, jnp.ones((1, 8), jnp.int32), implementation="paged")


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["ring", "allgather"])
def test_decoder_sequence_sharded_equals_unsharded(implementation):
    """4k tokens packed as 2 rows x 2048; mesh data 2 x sequence 4 over the 8 fake devices."""
    rng = np.random.default_rng(1)
    b, t = 2, 2048
    cfg = PRESETS["tiny"]
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
    seg_np = _packed_segments(rng, b, t, max_docs=6)
    pos_np = np.zeros_like(seg_np)
    for r in range(b):  # positions restart at 0 in every document
        starts = np.r_[0, np.flatnonzero(np.diff(seg_np[r])) + 1]
        for s, e in zip(starts, [*starts[1:], t]):
            pos_np[r, s:e] = np.arange(e - s)
    seg, pos = jnp.asarray(seg_np), jnp.asarray(pos_np)
    w = jnp.asarray(rng.standard_normal((b, t, cfg.vocab_size)), jnp.float32)

    def run(model):
        def loss(m):
            logits = m(ids, positions=pos, segment_ids=seg)
            return jnp.sum(logits * w) / (b * t), logits
        (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
        return np.asarray(logits), jax.tree.map(np.asarray, nnx.to_pure_dict(grads))

    want_logits, want_grads = run(Decoder(cfg, rngs=nnx.Rngs(0)))
    model = Decoder(dataclasses.replace(cfg, attention=implementation, attention_block=256), rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh({"data": 2, "sequence": 4})
    sharding.shard_model(model, mesh)
    got_logits, got_grads = run(model)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got_grads))
    for path, g in flat_want:
        np.testing.assert_allclose(flat_got[path], g, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))

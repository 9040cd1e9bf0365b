"""Chunked token log-probs / cross-entropy equal the plain full-logits computation, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oresearcher import losses
from oresearcher.model import PRESETS, Decoder


def _batch(b, t, vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(b, t + 1)).astype(np.int32)
    return {"input_ids": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
            "loss_mask": jnp.asarray(rng.random((b, t)) < 0.7),
            "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
            "segment_ids": jnp.ones((b, t), jnp.int32)}


def _reference_sums(model, batch):
    logits = model(batch["input_ids"], batch["positions"], batch["segment_ids"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    return -jnp.sum(picked * mask), jnp.sum(mask)


@pytest.mark.parametrize("chunk,remat", [(8, True), (1000, True), (13, False)])
def test_chunked_loss_and_grads_equal_unchunked(chunk, remat):  # chunk divides T, does not, exceeds T
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    batch = _batch(2, 40, model.cfg.vocab_size)
    graphdef, params = nnx.split(model, nnx.Param)

    def chunked(p):
        return losses.cross_entropy_sums(nnx.merge(graphdef, p), batch, chunk, remat)[0]

    def reference(p):
        return _reference_sums(nnx.merge(graphdef, p), batch)[0]

    v1, g1 = jax.jit(jax.value_and_grad(chunked))(params)
    v2, g2 = jax.jit(jax.value_and_grad(reference))(params)
    n = float(losses.cross_entropy_sums(model, batch, chunk)[1])
    assert n == float(np.asarray(batch["loss_mask"]).sum())
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_picked_logprobs_value_and_gradient_equal_autodiff():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 5, 11)) * 20, jnp.float32)  # wide range: the max shift matters
    targets = jnp.asarray(rng.integers(0, 11, size=(3, 5)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(3, 5)) * (rng.random((3, 5)) < 0.6), jnp.float32)  # some zero: masked

    def reference(x):
        return jnp.take_along_axis(jax.nn.log_softmax(x), targets[..., None], axis=-1)[..., 0]

    np.testing.assert_allclose(np.asarray(losses.picked_logprobs(logits, targets)), np.asarray(reference(logits)),
                               atol=1e-5)
    ours = jax.grad(lambda x: jnp.sum(losses.picked_logprobs(x, targets) * weights))(logits)
    ref = jax.grad(lambda x: jnp.sum(reference(x) * weights))(logits)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-6)
    assert float(jnp.abs(ours[weights == 0]).max()) == 0.0  # a masked token sends no gradient to any logit


def test_token_logprobs_shape_and_temperature():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(1))
    batch = _batch(3, 20, model.cfg.vocab_size, seed=1)
    logp = losses.token_logprobs(model, batch, chunk=7)
    assert logp.shape == (3, 20) and logp.dtype == jnp.float32
    assert bool(jnp.all(logp <= 0))
    logits = model(batch["input_ids"]) / 0.5
    ref = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(losses.token_logprobs(model, batch, 7, temperature=0.5)),
                               np.asarray(ref), atol=1e-5)


def test_masked_mean_is_token_mean():
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1, 0, 1], [0, 0, 1]], bool)
    assert float(losses.masked_mean(values, mask)) == pytest.approx((1 + 3 + 6) / 3)
    assert float(losses.masked_mean(values, jnp.zeros_like(mask))) == 0.0

"""GRPO objective against an independent NumPy reference (loss and d loss / d logits), and the masking of
observation tokens (exactly zero gradient)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oresearcher.rl import grpo

jax.config.update("jax_enable_x64", False)


def _cfg(**kw):
    base = dict(policy_loss="grpo", aggregation="token-mean", clip_low=0.2, clip_high=0.28, kl_beta=0.0,
                loss_normalizer=16)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _fixed_batch(seed=0, b=4, t=7, v=11, temperature=0.9):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
    # old logprobs near the current ones, so some ratios fall inside and some outside [0.8, 1.28]
    cur = _np_logprobs(logits.astype(np.float64), targets, temperature)
    old = (cur + rng.normal(scale=0.35, size=(b, t))).astype(np.float32)
    ref = (cur + rng.normal(scale=0.3, size=(b, t))).astype(np.float32)
    mask = rng.random((b, t)) < 0.7
    mask[:, 0] = True
    adv = rng.normal(size=(b,)).astype(np.float32)
    return logits, targets, old, ref, mask, adv, temperature


def _np_logprobs(logits, targets, temperature):
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]


def _np_reference(logits, targets, old, ref, mask, adv, temperature, clip_low, clip_high, beta, aggregation,
                  weight=None):
    """Loss and its gradient w.r.t. logits, derived by hand (float64); `weight` [B, T]: a constant per-token
    factor of the clipped term (the decoupled objective's importance weight)."""
    logits = logits.astype(np.float64)
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    lp = np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0])
    m = mask.astype(np.float64)
    r = np.exp(lp - old)
    a = adv[:, None].astype(np.float64)
    unclipped, clipped = r * a, np.clip(r, 1 - clip_low, 1 + clip_high) * a
    per_tok = -np.minimum(unclipped, clipped)
    # d(per_tok)/d lp: -r a where the unclipped term is the min (or r inside the range), else 0
    inside = (r >= 1 - clip_low) & (r <= 1 + clip_high)
    dper = np.where((unclipped <= clipped) | inside, -r * a, 0.0)
    if weight is not None:
        per_tok, dper = per_tok * weight, dper * weight
    if beta:
        q = ref - lp
        per_tok = per_tok + beta * (np.exp(q) - q - 1)
        dper = dper + beta * (1 - np.exp(q))
    b, t = lp.shape
    if aggregation == "token-mean":
        w = m / m.sum()
    elif aggregation == "sequence-mean-token-mean":
        w = m / m.sum(1, keepdims=True) / b
    else:  # a fixed normaliser L = 16 tokens per episode, whatever the padded length t
        w = m / ((m.sum(1) > 0).sum() * 16)
    loss = (w * per_tok).sum()
    dlp = w * dper
    onehot = np.eye(logits.shape[-1])[targets]
    dlogits = dlp[..., None] * (onehot - probs) / temperature
    return loss, dlogits


def _jax_loss(logits, targets, old, ref, mask, adv, temperature, cfg):
    def f(lg):
        z = lg / temperature
        lp = jnp.take_along_axis(z, targets[..., None], -1)[..., 0] - jax.nn.logsumexp(z, -1)
        batch = {"old_logp": old, "ref_logp": ref, "loss_mask": mask, "advantages": adv}
        return grpo.grpo_objective(lp, batch, cfg)[0]
    return jax.value_and_grad(f)(jnp.asarray(logits))


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_loss_and_grad_match_numpy(aggregation, beta):
    logits, targets, old, ref, mask, adv, temperature = _fixed_batch()
    cfg = _cfg(aggregation=aggregation, kl_beta=beta)
    loss, grad = _jax_loss(logits, targets, old, ref, mask, adv, temperature, cfg)
    ref_loss, ref_grad = _np_reference(logits, targets, old, ref, mask, adv, temperature, 0.2, 0.28, beta,
                                       aggregation)
    # the fixed batch exercises both clipping regimes
    r = np.exp(_np_logprobs(logits.astype(np.float64), targets, temperature) - old)[mask]
    assert (r < 0.8).any() and (r > 1.28).any() and ((r > 0.8) & (r < 1.28)).any()
    print(f"{aggregation} beta={beta}: loss jax={float(loss):.8f} numpy={ref_loss:.8f} "
          f"max|dgrad|={np.abs(np.asarray(grad) - ref_grad).max():.2e}")
    np.testing.assert_allclose(float(loss), ref_loss, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=1e-5, rtol=0)


def test_masked_tokens_get_exactly_zero_gradient():
    logits, targets, old, ref, mask, adv, temperature = _fixed_batch(seed=1)
    old = np.where(mask, old, -np.inf).astype(np.float32)  # garbage where masked must not leak (no NaN)
    _, grad = _jax_loss(logits, targets, old, ref, mask, adv, temperature, _cfg(kl_beta=0.1))
    grad = np.asarray(grad)
    assert np.isfinite(grad).all()
    assert (grad[~mask] == 0.0).all()
    assert (np.abs(grad[mask]).sum(-1) > 0).all()


def test_observation_tokens_zero_gradient_through_model():
    """With a real decoder: the loss does not depend on the targets/old logprobs at observation positions."""
    from flax import nnx

    from oresearcher.model import PRESETS, Decoder

    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, t = 2, 12
    ids = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
    mask = np.ones((b, t), bool)
    mask[:, :3] = False      # prompt
    mask[:, 6:9] = False     # an observation
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
             "advantages": np.array([1.0, -0.5], np.float32)}
    cfg = _cfg()

    def loss_with(targets, old):
        def f(m):
            lp = grpo.target_logprobs(m, {**batch, "targets": targets}, 1.0, chunk=5)
            return grpo.grpo_objective(lp, {**batch, "old_logp": old}, cfg)[0]
        return nnx.value_and_grad(f)(model)

    old = np.asarray(grpo.target_logprobs(model, batch, 1.0)) - 0.1
    loss1, g1 = loss_with(batch["targets"], old)
    targets2 = batch["targets"].copy()
    targets2[:, 6:9] = (targets2[:, 6:9] + 7) % 256
    old2 = old.copy()
    old2[:, 6:9] = 5.0
    loss2, g2 = loss_with(targets2, old2)
    assert float(loss1) == float(loss2)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_advantages_and_zero_variance_groups():
    rewards = np.array([[1.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 9.0, 0.2]])
    valid = np.array([[True] * 4, [True] * 4, [True, True, False, False]])
    adv, keep = grpo.get_advantage_estimator("grpo")(rewards, valid)
    np.testing.assert_allclose(adv[0], (rewards[0] - 0.5) / (np.std(rewards[0]) + 1e-6), rtol=1e-5)
    assert not keep[1].any() and (adv[1] == 0).all()            # zero variance: dropped
    assert keep[2].tolist() == [True, True, False, False]        # abstained episodes out of stats and loss
    np.testing.assert_allclose(adv[2, :2], [1.0, -1.0], rtol=1e-5)
    adv, _ = grpo.get_advantage_estimator("rloo")(rewards, valid)
    np.testing.assert_allclose(adv[0, 0], 1.0 - (0.0 + 0.5 + 0.5) / 3, rtol=1e-6)
    with pytest.raises(KeyError, match="registered"):
        grpo.get_policy_loss("nope")


def test_the_decoupled_objective_clips_against_the_proximal_policy_with_truncated_weights():
    """With prox_logp the ratio is pi_theta / pi_prox and each token is weighted by min(pi_prox / pi_old, cap):
    loss and gradient as derived by hand; and with pi_prox = pi_old it is the plain objective."""
    logits, targets, old, ref, mask, adv, temperature = _fixed_batch(seed=3)
    rng = np.random.default_rng(4)
    prox = (old + rng.normal(scale=0.5, size=old.shape)).astype(np.float32)
    cap = 1.5
    cfg = _cfg(behaviour_cap=cap)

    def f(lg, prox):
        z = lg / temperature
        lp = jnp.take_along_axis(z, targets[..., None], -1)[..., 0] - jax.nn.logsumexp(z, -1)
        batch = {"old_logp": old, "prox_logp": prox, "loss_mask": mask, "advantages": adv}
        return grpo.grpo_objective(lp, batch, cfg)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logits), prox)
    weight = np.minimum(np.exp(prox.astype(np.float64) - old), cap)
    assert (weight[mask] == cap).any() and (weight[mask] < 1).any()        # both truncated and small weights
    want, want_grad = _np_reference(logits, targets, prox, ref, mask, adv, temperature, 0.2, 0.28, 0.0,
                                    "token-mean", weight=weight)
    np.testing.assert_allclose(float(loss), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-5, rtol=0)
    truncated = (np.exp(prox.astype(np.float64) - old) > cap)[mask].mean()
    np.testing.assert_allclose(float(metrics["behaviour_truncated"]), truncated, atol=1e-6)
    # fresh episodes (pi_prox == pi_old): every weight is 1, the plain objective
    (same, _), same_grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logits), old)
    plain, plain_grad = _jax_loss(logits, targets, old, ref, mask, adv, temperature, _cfg())
    np.testing.assert_allclose(float(same), float(plain), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(same_grad), np.asarray(plain_grad), atol=1e-6, rtol=0)

"""The GRPO update's gradient accumulation: k microbatches give the same optimizer step as the whole minibatch
(fp32); the fixed normaliser of sequence-mean-token-sum; the policy entropy the update reports."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from oresearcher import sharding
from oresearcher.model import PRESETS, Decoder
from oresearcher.rl import grpo


def _batch(b=8, t=32, seed=0, pad_to=None):
    """A minibatch as rollout.to_batch lays it out: rows of different policy lengths, one empty padding row."""
    rng = np.random.default_rng(seed)
    pad_to = pad_to or t
    ids = np.zeros((b, pad_to + 1), np.int32)
    ids[:, :t + 1] = rng.integers(0, 256, size=(b, t + 1))
    mask = np.zeros((b, pad_to), bool)
    for i in range(b - 1):                      # the last row is padding: no policy token
        mask[i, 6:6 + 2 + 3 * i] = True
        mask[i, 28:t] = True
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
             "positions": np.broadcast_to(np.arange(pad_to, dtype=np.int32), (b, pad_to)).copy(),
             "segment_ids": np.ones((b, pad_to), np.int32),
             "advantages": rng.normal(size=(b,)).astype(np.float32),
             "old_logp": np.zeros((b, pad_to), np.float32)}
    batch["old_logp"][:, :t] = rng.normal(-5.5, 0.3, (b, t))
    p = 32
    batch["policy_index"] = np.zeros((b, p), np.int32)
    batch["policy_mask"] = np.zeros((b, p), bool)
    for i in range(b):
        where = np.nonzero(mask[i])[0]
        batch["policy_index"][i, :len(where)] = where
        batch["policy_mask"][i, :len(where)] = True
    return batch


def _step(mesh, batch, cfg):
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(model, mesh)
    opt = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    with jax.set_mesh(mesh):
        metrics = jax.device_get(grpo.train_step(model, opt, grpo.place_batch(batch, mesh), cfg))
    return model, metrics


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum"])
def test_microbatches_give_the_whole_minibatch_update(aggregation):
    batch = _batch()
    mesh = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
    whole = grpo.GRPOConfig(aggregation=aggregation, logprob_chunk=16, loss_normalizer=64)
    m1, out1 = _step(mesh, batch, whole)
    m4, out4 = _step(mesh, batch, dataclasses.replace(whole, microbatch_tokens=2 * 32))  # 4 microbatches of 2 rows
    assert out1["microbatches"] == 1 and out4["microbatches"] == 4
    for key in ("loss", "grad_norm", "clip_fraction", "ratio", "entropy", "policy_tokens"):
        np.testing.assert_allclose(out4[key], out1[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert out1["policy_tokens"] == batch["policy_mask"].sum()
    # sgd(lr=1): the parameter change is minus the gradient, so this compares the gradients themselves
    for a, b in zip(jax.tree.leaves(nnx.state(m4, nnx.Param)), jax.tree.leaves(nnx.state(m1, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(out1["grad_norm"]) > 1e-3


def test_microbatch_tokens_that_cannot_split_the_rows_are_refused():
    cfg = grpo.GRPOConfig(microbatch_tokens=1000)
    assert grpo.num_microbatches(8, 128, cfg, batch_shards=2) == 2          # 4 rows x 128 = 512 tokens
    with pytest.raises(ValueError, match="grpo.microbatch_tokens=1000.*8 rows x 1024 tokens.*at least 2048"):
        grpo.num_microbatches(8, 1024, cfg, batch_shards=2)


def test_sequence_mean_token_sum_does_not_depend_on_the_padded_length():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    cfg = grpo.GRPOConfig(aggregation="sequence-mean-token-sum", logprob_chunk=16, loss_normalizer=4096)
    losses = []
    for pad_to in (32, 64):
        batch = {k: jnp.asarray(v) for k, v in _batch(pad_to=pad_to).items()}
        logp = grpo.target_logprobs(model, batch, 1.0, 16, batch["policy_index"])
        losses.append(float(grpo.grpo_objective(logp, grpo.policy_view(batch), cfg)[0]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    # the value: per-token losses summed, over (7 episodes with policy tokens x L)
    mask = _batch()["policy_mask"]
    weights = grpo.get_loss_aggregation("sequence-mean-token-sum")(jnp.asarray(mask), cfg)
    np.testing.assert_allclose(np.asarray(weights)[mask], 1.0 / (7 * 4096), rtol=1e-6)


def test_entropy_is_the_policy_entropy_at_the_policy_tokens():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    logp, entropy = grpo.target_logprobs(model, batch, 0.7, 16, batch["policy_index"], with_entropy=True)
    logits = np.asarray(model(batch["input_ids"], batch["positions"], batch["segment_ids"]), np.float64) / 0.7
    z = logits - logits.max(-1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
    full = -(np.exp(logq) * logq).sum(-1)
    want = np.take_along_axis(full, np.asarray(batch["policy_index"]), axis=1)
    np.testing.assert_allclose(np.asarray(entropy), want, rtol=1e-4, atol=1e-5)
    assert np.asarray(logp).shape == want.shape

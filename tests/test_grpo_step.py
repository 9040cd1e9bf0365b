"""The jitted GRPO update on a 2x2x2 mesh equals the same update on one device, and several optimizer steps on one
rollout batch move the ratio away from 1 (the old logprobs stay those of the rollout)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from oresearcher import sharding
from oresearcher.model import PRESETS, Decoder
from oresearcher.rl import grpo
from oresearcher.rl.grpo import GRPOConfig, train_step
from oresearcher.rl.grpo import place_batch as _place


def _batch(model, seed=0, b=8, t=32):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
    mask = np.zeros((b, t), bool)
    mask[:, 8:20] = True
    mask[:, 24:] = True                     # 20..23: an observation
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
             "segment_ids": np.ones((b, t), np.int32),
             "advantages": rng.normal(size=(b,)).astype(np.float32)}
    batch["old_logp"] = np.asarray(grpo.target_logprobs(model, batch, 1.0)) + rng.normal(0, 0.05, (b, t)).astype(
        np.float32)
    # the policy positions, as rollout.to_batch lays them out (left-aligned, padded to 32)
    batch["policy_index"] = np.zeros((b, 32), np.int32)
    batch["policy_mask"] = np.zeros((b, 32), bool)
    for i in range(b):
        where = np.nonzero(mask[i])[0]
        batch["policy_index"][i, :len(where)] = where
        batch["policy_mask"][i, :len(where)] = True
    return batch


def _run(mesh, steps, batch):
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(model, mesh)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    cfg = GRPOConfig(logprob_chunk=16)
    out = []
    with jax.set_mesh(mesh):
        for _ in range(steps):
            out.append(jax.device_get(train_step(model, opt, _place(batch, mesh), cfg)))
    return model, out


@pytest.mark.slow
def test_sharded_update_equals_single_device_and_ratio_moves():
    """Also checks the compact loss (vocab projection at the policy positions only) equals the full one."""
    ref_model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    batch = _batch(ref_model)
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    mesh1 = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    full = grpo.grpo_objective(grpo.target_logprobs(ref_model, batch, 1.0), batch, GRPOConfig())[0]
    compact = grpo.grpo_objective(grpo.target_logprobs(ref_model, batch, 1.0, 16, batch["policy_index"]),
                                  grpo.policy_view(batch), GRPOConfig())[0]
    np.testing.assert_allclose(float(full), float(compact), rtol=1e-6)
    m8, out8 = _run(mesh8, 4, batch)
    m1, out1 = _run(mesh1, 4, batch)
    for a, b in zip(out8, out1):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(m8, nnx.Param)), jax.tree.leaves(nnx.state(m1, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)  # Adam amplifies float noise
    # params really live on the mesh
    assert not m8.layers.w_up[...].sharding.is_fully_replicated
    print("GRPO step on 8 devices == 1 device; losses", [float(o["loss"]) for o in out8],
          "clip fractions", [float(o["clip_fraction"]) for o in out8])
    ratios = [float(o["ratio"]) for o in out8]
    assert abs(ratios[-1] - 1.0) > abs(ratios[0] - 1.0) or out8[-1]["clip_fraction"] > 0
    assert float(out8[0]["policy_tokens"]) == 8 * 20

"""Agentic GRPO: group-normalised advantages and the clipped policy objective, as small registries.

For one question the rollout samples a *group* of G episodes o_1..o_G with rewards R_1..R_G. GRPO replaces a
learned value baseline by the group statistics:

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)                                   (advantage, one per episode)

and every policy-authored token t of episode i carries A_i. With the per-token importance ratio against the
policy that sampled the rollout (its logprobs are recorded by the sampler),

    r_t = exp(log pi_theta(o_t | o_<t) - log pi_old(o_t | o_<t)),

the per-token objective is PPO's pessimistic clipped surrogate with the asymmetric ("clip-higher") range
[1 - eps_low, 1 + eps_high] = [0.8, 1.28]:

    l_t = -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i)  (+ beta * KL_t, off by default)

Gradient, per token (what the NumPy reference in tests/test_grpo_loss.py checks):
    d l_t / d log pi_theta = -r_t A_i  when the unclipped term is the minimum (or r_t is inside the range),
                            = 0         when the clipped term is the strict minimum (the ratio left the range in
                                        the direction the advantage pushes: no further push).
A raised eps_high lets low-probability tokens with A > 0 grow further before clipping, which keeps entropy up.

KL to a reference policy uses the k3 estimator (Schulman 2020), unbiased and always >= 0, with a non-zero gradient:
    KL_t = exp(q_t) - q_t - 1,  q_t = log pi_ref - log pi_theta,   d KL_t / d log pi_theta = 1 - exp(q_t).

Observation, prompt and padding tokens have loss_mask 0: they are context, never targets, and get exactly zero
gradient (the masked entries are replaced before the exponentials, so not even a NaN can leak through).

Registries (Tunix style): `register_advantage_estimator`, `register_policy_loss`, `register_loss_aggregation`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oresearcher import sharding

# ---------------------------------------------------------------------------------------------- registries
ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
LOSS_AGGREGATIONS: dict[str, Callable] = {}


def _register(table: dict, kind: str):
    def register(name: str):
        def deco(fn):
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered")
            table[name] = fn
            return fn
        return deco
    return register


register_advantage_estimator = _register(ADVANTAGE_ESTIMATORS, "advantage estimator")
register_policy_loss = _register(POLICY_LOSSES, "policy loss")
register_loss_aggregation = _register(LOSS_AGGREGATIONS, "loss aggregation")


def _get(table: dict, kind: str, name: str):
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
    return table[name]


def get_advantage_estimator(name: str):
    return _get(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str):
    return _get(POLICY_LOSSES, "policy loss", name)


def get_loss_aggregation(name: str):
    return _get(LOSS_AGGREGATIONS, "loss aggregation", name)


# -------------------------------------------------------------------------------------------- advantages
# Host-side (NumPy): rewards arrive from HTTP on the host; the result is one float per episode.
# Signature: (rewards [Q, G] float, valid [Q, G] bool, eps) -> (advantages [Q, G] float32, keep [Q, G] bool).
# `valid` is False for episodes whose judge abstained: they are excluded from the group statistics and from the
# loss. A group whose valid rewards have zero variance (or fewer than two valid episodes) teaches nothing (every
# advantage would be 0) and is dropped: keep = False for all its episodes.

def _group_stats(rewards: np.ndarray, valid: np.ndarray):
    r = np.where(valid, rewards, 0.0).astype(np.float64)
    n = valid.sum(axis=1, keepdims=True)
    mean = r.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(valid, (rewards - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    std = np.sqrt(var)
    informative = (n >= 2) & (std > 1e-8)
    return mean, std, n, informative


@register_advantage_estimator("grpo")
def grpo_advantages(rewards, valid, eps: float = 1e-6):
    """A_i = (R_i - mean) / (std + eps) over the group's valid episodes (population std, ddof=0)."""
    rewards, valid = np.asarray(rewards, np.float64), np.asarray(valid, bool)
    mean, std, _, informative = _group_stats(rewards, valid)
    keep = valid & informative
    adv = np.where(keep, (rewards - mean) / (std + eps), 0.0)
    return adv.astype(np.float32), keep


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards, valid, eps: float = 1e-6):
    """A_i = R_i - mean (no std division: Dr. GRPO argues the std term over-weights near-uniform groups)."""
    del eps
    rewards, valid = np.asarray(rewards, np.float64), np.asarray(valid, bool)
    mean, _, _, informative = _group_stats(rewards, valid)
    keep = valid & informative
    return np.where(keep, rewards - mean, 0.0).astype(np.float32), keep


@register_advantage_estimator("rloo")
def rloo_advantages(rewards, valid, eps: float = 1e-6):
    """Leave-one-out baseline: A_i = R_i - mean_{j != i} R_j = n/(n-1) * (R_i - mean)."""
    del eps
    rewards, valid = np.asarray(rewards, np.float64), np.asarray(valid, bool)
    mean, _, n, informative = _group_stats(rewards, valid)
    keep = valid & informative
    adv = np.where(keep, (rewards - mean) * n / np.maximum(n - 1, 1), 0.0)
    return adv.astype(np.float32), keep


# ------------------------------------------------------------------------------------------ policy losses
# Signature: (logp [B,T], old_logp [B,T], advantages [B], mask [B,T] bool, cfg) -> (per-token loss [B,T],
# metrics dict of per-token [B,T] quantities that the aggregation averages the same way).

@register_policy_loss("grpo")
def clipped_surrogate(logp, old_logp, advantages, mask, cfg):
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A) per token; see the module docstring for the gradient."""
    logp = jnp.where(mask, logp, 0.0)
    old_logp = jnp.where(mask, old_logp, 0.0)
    ratio = jnp.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * adv
    loss = -jnp.minimum(unclipped, clipped)
    metrics = {"clip_fraction": (clipped < unclipped).astype(jnp.float32), "ratio": ratio}
    return loss, metrics


# ----------------------------------------------------------------------------------------- aggregations
# Signature: (per-token values [B,T], mask [B,T] bool) -> scalar.

@register_loss_aggregation("token-mean")
def token_mean(values, mask):
    """sum_{i,t} m l / sum_{i,t} m: every policy token weighs the same, so long episodes are not down-weighted
    per token (DAPO). This is the default."""
    m = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


@register_loss_aggregation("sequence-mean-token-mean")
def sequence_mean_token_mean(values, mask):
    """Mean over episodes of each episode's token mean (the original GRPO): every episode weighs the same."""
    m = mask.astype(jnp.float32)
    per_seq = jnp.sum(jnp.where(mask, values, 0.0), axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    has = jnp.sum(m, axis=1) > 0
    return jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(jnp.sum(has.astype(jnp.float32)), 1.0)


@register_loss_aggregation("sequence-mean-token-sum")
def sequence_mean_token_sum(values, mask):
    """sum_{i,t} m l / (B * T): a constant normaliser (Dr. GRPO), so no length bias from per-episode division."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / (values.shape[0] * values.shape[1])


# ------------------------------------------------------------------------------------------- the objective
def k3_kl(logp, ref_logp, mask):
    """KL_t = exp(q) - q - 1 with q = log pi_ref - log pi_theta (>= 0, zero where masked)."""
    q = jnp.where(mask, ref_logp - logp, 0.0)
    return jnp.exp(q) - q - 1.0


def grpo_objective(logp, batch, cfg):
    """Scalar loss and metrics from the policy's token logprobs.

    logp [B,T] float32: log pi_theta of each target token; batch: "old_logp" [B,T] (sampler's), "loss_mask" [B,T]
    (1 = policy-authored token, 0 = prompt / observation / pad), "advantages" [B], optional "ref_logp" [B,T].
    cfg: policy_loss, aggregation, clip_low, clip_high, kl_beta.
    """
    mask = batch["loss_mask"].astype(bool)
    loss_fn = get_policy_loss(cfg.policy_loss)
    aggregate = get_loss_aggregation(cfg.aggregation)
    per_token, token_metrics = loss_fn(logp, batch["old_logp"], batch["advantages"], mask, cfg)
    metrics = {}
    if cfg.kl_beta:
        kl = k3_kl(logp, batch["ref_logp"], mask)
        per_token = per_token + cfg.kl_beta * kl
        metrics["kl"] = aggregate(kl, mask)
    loss = aggregate(per_token, mask)
    for name, value in token_metrics.items():
        metrics[name] = token_mean(value, mask)
    metrics["policy_tokens"] = jnp.sum(mask.astype(jnp.float32))
    return loss, metrics


def target_logprobs(model, batch, temperature: float = 1.0, chunk: int = 512, index=None):
    """log softmax(logits / temperature)[target]: float32 [B, T], or [B, P] at positions `index` [B, P] only.

    The same temperature as the sampler's, so that the ratio at the first update is 1 up to numerics. The vocab
    projection runs in chunks of `chunk` positions (rematerialised in the backward pass), so the [B, T, V] logits
    never exist at once; with `index` it runs only where the loss needs it: an agentic episode is mostly prompt
    and observations, and the projection onto a large vocabulary is most of a small model's cost.
    """
    hidden = model.hidden(batch["input_ids"], batch.get("positions"), batch.get("segment_ids"))
    targets = batch["targets"]
    if index is not None:
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index, axis=1)
    t = hidden.shape[1]
    chunk = min(chunk, t)

    @jax.checkpoint
    def chunk_logprobs(h, tgt):
        logits = model.unembed(h) / temperature
        picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    pieces = [chunk_logprobs(hidden[:, s:s + chunk], targets[:, s:s + chunk]) for s in range(0, t, chunk)]
    return jnp.concatenate(pieces, axis=1)


def policy_view(batch: dict) -> dict:
    """The loss inputs gathered at the policy positions batch["policy_index"] [B, P] (see rollout.to_batch):
    old_logp, loss_mask (and ref_logp if present) as [B, P]; advantages as they are."""
    index = batch["policy_index"]
    view = {"advantages": batch["advantages"], "loss_mask": batch["policy_mask"],
            "old_logp": jnp.take_along_axis(batch["old_logp"], index, axis=1)}
    if "ref_logp" in batch:
        view["ref_logp"] = batch["ref_logp"]
    return view


# ------------------------------------------------------------------------------------------- update step
@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The static part of the objective (a jit compile key)."""
    policy_loss: str = "grpo"
    aggregation: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_beta: float = 0.0
    temperature: float = 1.0
    logprob_chunk: int = 512

    @classmethod
    def from_config(cls, config) -> "GRPOConfig":
        g = config.grpo
        return cls(g.policy_loss, g.aggregation, float(g.clip_low), float(g.clip_high), float(g.kl_beta),
                   float(config.rollout.temperature), int(g.logprob_chunk))


@functools.partial(nnx.jit, static_argnames=("cfg",))
def train_step(model, optimizer, batch, cfg: GRPOConfig):
    def loss_fn(m):
        logp = target_logprobs(m, batch, cfg.temperature, cfg.logprob_chunk, batch["policy_index"])
        return grpo_objective(logp, policy_view(batch), cfg)

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    return metrics


@functools.partial(nnx.jit, static_argnames=("temperature", "chunk"))
def reference_logprobs(model, batch, temperature: float, chunk: int):
    """The reference policy's logprobs at the policy positions, [B, P] (for the k3 KL term)."""
    return target_logprobs(model, batch, temperature, chunk, batch["policy_index"])


def place_batch(batch: dict, mesh) -> dict:
    """Every [B, ...] array of a batch onto the mesh: batch over (data, fsdp), length over sequence."""
    out = {}
    for k, v in batch.items():
        axes = ("activation_batch", "activation_length")[:v.ndim]
        out[k] = jax.device_put(v, sharding.logical_sharding(axes, mesh, None, v.shape))
    return out



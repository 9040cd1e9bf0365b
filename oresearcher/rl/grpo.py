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

Asynchronous RL trains on episodes sampled by an older policy (rl/train.py: max_staleness), in another numeric
layout (the engine's bf16 copy). With `behaviour_cap` > 0 the update uses the decoupled objective: the ratio is
taken against the trainer's own logprobs before the update (prox_logp, the proximal policy), and each token is
weighted by the truncated importance weight w_t = min(pi_prox / pi_behaviour, cap) of the engine's logprobs:

    l_t = -w_t min(r'_t A_i, clip(r'_t, 1 - eps_low, 1 + eps_high) A_i),   r'_t = pi_theta / pi_prox

so the clip bounds how far one update moves the policy, and the weight alone accounts for the episodes' age and
the sampler's numerics (w_t = 1 up to numerics when the episodes are fresh).

KL to a reference policy uses the k3 estimator (Schulman 2020), unbiased and always >= 0, with a non-zero gradient:
    KL_t = exp(q_t) - q_t - 1,  q_t = log pi_ref - log pi_theta,   d KL_t / d log pi_theta = 1 - exp(q_t).

Observation, prompt and padding tokens have loss_mask 0: they are context, never targets, and get exactly zero
gradient (the masked entries are replaced before the exponentials, so not even a NaN can leak through).

Registries (Tunix style): `register_advantage_estimator`, `register_policy_loss`, `register_loss_aggregation`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oresearcher import losses, sharding

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
# An aggregation is a weight per token: loss = sum_{i,t} w_it l_it. Signature: (mask [B,T] bool, cfg) -> w [B,T]
# float32, zero where masked. The weights are computed once over a whole minibatch, before it is split into
# microbatches for gradient accumulation, so that the accumulated loss and gradient are exactly the minibatch's.

def token_weights(mask):
    """1 / (policy tokens in the batch) on every policy token: the weights of a token mean."""
    m = mask.astype(jnp.float32)
    return m / jnp.maximum(jnp.sum(m), 1.0)


@register_loss_aggregation("token-mean")
def token_mean_weights(mask, cfg):
    """sum_{i,t} m l / sum_{i,t} m: every policy token weighs the same, so long episodes are not down-weighted
    per token (DAPO). This is the default."""
    del cfg
    return token_weights(mask)


@register_loss_aggregation("sequence-mean-token-mean")
def sequence_mean_token_mean_weights(mask, cfg):
    """Mean over episodes of each episode's token mean (the original GRPO): every episode weighs the same."""
    del cfg
    m = mask.astype(jnp.float32)
    per_seq = jnp.sum(m, axis=1, keepdims=True)
    episodes = jnp.sum((per_seq > 0).astype(jnp.float32))
    return m / jnp.maximum(per_seq, 1.0) / jnp.maximum(episodes, 1.0)


@register_loss_aggregation("sequence-mean-token-sum")
def sequence_mean_token_sum_weights(mask, cfg):
    """sum_{i,t} m l / (episodes * L): every episode's token sum over a fixed L = cfg.loss_normalizer tokens
    (Dr. GRPO's generation budget), averaged over the episodes that have policy tokens. L does not depend on the
    episode's length nor on the padded length of its minibatch, so no length bias."""
    m = mask.astype(jnp.float32)
    episodes = jnp.sum((jnp.sum(m, axis=1) > 0).astype(jnp.float32))
    return m / (jnp.maximum(episodes, 1.0) * float(cfg.loss_normalizer))


def token_mean(values, mask):
    """The token mean of per-token values over the policy tokens (metrics)."""
    return jnp.sum(jnp.where(mask, values, 0.0) * token_weights(mask))


def aggregate(values, weights):
    """sum_{i,t} w_it v_it (weights are zero off the policy tokens; masked values are never read)."""
    return jnp.sum(jnp.where(weights > 0, values, 0.0) * weights)


# ------------------------------------------------------------------------------------------- the objective
def k3_kl(logp, ref_logp, mask):
    """KL_t = exp(q) - q - 1 with q = log pi_ref - log pi_theta (>= 0, zero where masked)."""
    q = jnp.where(mask, ref_logp - logp, 0.0)
    return jnp.exp(q) - q - 1.0


def grpo_objective(logp, batch, cfg):
    """Scalar loss and metrics from the policy's token logprobs.

    logp [B,T] float32: log pi_theta of each target token; batch: "old_logp" [B,T] (sampler's), "loss_mask" [B,T]
    (1 = policy-authored token, 0 = prompt / observation / pad), "advantages" [B], optional "ref_logp" [B,T],
    optional "prox_logp" [B,T] (the trainer's before the update: the decoupled objective, with cfg.behaviour_cap),
    and
    optionally the token weights "loss_weights" / "metric_weights" [B,T] of the whole minibatch when `batch` is
    one microbatch of it (grpo_update); without them they are computed from this batch's mask.
    cfg: policy_loss, aggregation, clip_low, clip_high, kl_beta (and loss_normalizer for sequence-mean-token-sum).
    """
    mask = batch["loss_mask"].astype(bool)
    loss_fn = get_policy_loss(cfg.policy_loss)
    weights = batch.get("loss_weights")
    if weights is None:
        weights = get_loss_aggregation(cfg.aggregation)(mask, cfg)
    metric_weights = batch.get("metric_weights")
    if metric_weights is None:
        metric_weights = token_weights(mask)
    metrics = {}
    if "prox_logp" in batch:
        log_w = jnp.where(mask, batch["prox_logp"] - batch["old_logp"], 0.0)
        weight = jnp.minimum(jnp.exp(log_w), cfg.behaviour_cap)
        per_token, token_metrics = loss_fn(logp, batch["prox_logp"], batch["advantages"], mask, cfg)
        per_token = per_token * weight
        token_metrics = dict(token_metrics, behaviour_weight=weight,
                             behaviour_truncated=(log_w > math.log(cfg.behaviour_cap)).astype(jnp.float32))
    else:
        per_token, token_metrics = loss_fn(logp, batch["old_logp"], batch["advantages"], mask, cfg)
    if cfg.kl_beta:
        kl = k3_kl(logp, batch["ref_logp"], mask)
        per_token = per_token + cfg.kl_beta * kl
        metrics["kl"] = aggregate(kl, weights)
    loss = aggregate(per_token, weights)
    for name, value in token_metrics.items():
        metrics[name] = aggregate(value, metric_weights)
    metrics["policy_tokens"] = jnp.sum(mask.astype(jnp.float32))
    return loss, metrics


def target_logprobs(model, batch, temperature: float = 1.0, chunk: int = 512, index=None,
                    with_entropy: bool = False):
    """log softmax(logits / temperature)[target]: float32 [B, T], or [B, P] at positions `index` [B, P] only;
    with `with_entropy`, also the policy's entropy at each of those positions (nats, no gradient).

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
    b, t, d = hidden.shape
    chunk = min(chunk, t)
    n = -(-t // chunk)

    @jax.checkpoint
    def chunk_logprobs(args):
        h, tgt = args
        logits = model.unembed(h).astype(jnp.float32) / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return picked - lse, jnp.zeros_like(lse)
        z = jax.lax.stop_gradient(logits)
        # H = logsumexp(z) - sum_v p_v z_v: one more pass over the chunk's logits, none in the backward
        entropy = jax.lax.stop_gradient(lse) - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
        return picked - lse, entropy

    if n == 1:
        logp, entropy = chunk_logprobs((hidden, targets))
    else:
        # one chunk after another (lax.map), as losses.logprobs_from_hidden does: chunks written as separate ops
        # are free for XLA to schedule at once, each with its [B, chunk, V] fp32 logits alive (hundreds of GiB
        # for a 64k-token episode of a 152k vocabulary)
        h = losses._pad_to_multiple(hidden, chunk).reshape(b, n, chunk, d).swapaxes(0, 1)
        y = losses._pad_to_multiple(targets, chunk).reshape(b, n, chunk).swapaxes(0, 1)
        out = jax.lax.map(chunk_logprobs, (h, y))
        logp, entropy = (o.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for o in out)
    return (logp, entropy) if with_entropy else logp


def policy_view(batch: dict) -> dict:
    """The loss inputs gathered at the policy positions batch["policy_index"] [B, P] (see rollout.to_batch):
    old_logp, loss_mask (and ref_logp, prox_logp, loss_weights, metric_weights if present) as [B, P]; advantages as they
    are."""
    index = batch["policy_index"]
    view = {"advantages": batch["advantages"], "loss_mask": batch["policy_mask"],
            "old_logp": jnp.take_along_axis(batch["old_logp"], index, axis=1)}
    for key in ("ref_logp", "prox_logp", "loss_weights", "metric_weights"):
        if key in batch:
            view[key] = batch[key]
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
    loss_normalizer: int = 8192         # sequence-mean-token-sum's fixed L (tokens); rollout.max_tokens by default
    microbatch_tokens: int = 0          # gradient accumulation: rows x padded length per microbatch (0 = no limit)
    behaviour_cap: float = 0.0          # > 0: the decoupled objective with importance weights truncated here

    @classmethod
    def from_config(cls, config) -> GRPOConfig:
        g = config.grpo
        return cls(g.policy_loss, g.aggregation, float(g.clip_low), float(g.clip_high), float(g.kl_beta),
                   float(config.rollout.temperature), int(g.logprob_chunk),
                   int(g.get("loss_normalizer", 0) or config.rollout.max_tokens),
                   int(g.get("microbatch_tokens", 0)), float(g.get("behaviour_cap", 0.0)))


def num_microbatches(rows: int, length: int, cfg: GRPOConfig, batch_shards: int = 1) -> int:
    """The fewest microbatches k that split `rows` rows of `length` tokens into equal microbatches of at most
    cfg.microbatch_tokens tokens, each still a whole number of rows per batch shard (data x fsdp devices)."""
    if cfg.microbatch_tokens <= 0:
        return 1
    for k in range(1, rows + 1):
        if rows % k == 0 and (rows // k) % batch_shards == 0 and (rows // k) * length <= cfg.microbatch_tokens:
            return k
    raise ValueError(
        f"grpo.microbatch_tokens={cfg.microbatch_tokens}: no split of a minibatch of {rows} rows x {length} tokens "
        f"into equal microbatches of at most that many tokens with a multiple of {batch_shards} rows each (the "
        f"mesh's data x fsdp devices); raise grpo.microbatch_tokens to at least {batch_shards * length}, or use "
        f"more grpo.minibatches")


def _split_rows(x, k: int):
    """[B, ...] -> [k, B/k, ...], microbatch j = rows j, j+k, j+2k, ...: a device holding a contiguous block of
    rows holds an equal share of every microbatch, so the split moves no data between devices."""
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def _pin_like(params, model):
    """tree -> tree with every leaf constrained to the sharding of its parameter: the gradient accumulator of the
    microbatch scan is otherwise free to be replicated (a whole fp32 copy of the model on every device)."""
    if model.mesh is None:
        return lambda tree: tree
    shardings = jax.tree.leaves(sharding.param_shardings(params, model.mesh, model.rules))

    def pin(tree):
        leaves, treedef = jax.tree.flatten(tree)
        return jax.tree.unflatten(treedef, [jax.lax.with_sharding_constraint(x, s)
                                            for x, s in zip(leaves, shardings)])
    return pin


def update_fn(graphdef, cfg: GRPOConfig, microbatches: int = 1):
    """The pure GRPO update update(state, batch) -> (state, metrics), with state = nnx.state((model, optimizer)).

    One optimizer step on the minibatch `batch`: the gradient of its loss is accumulated over `microbatches`
    sequential microbatches (a lax.scan) with the token weights of the whole minibatch, so the result equals the
    unsplit minibatch's up to float summation order, at the activation memory of one microbatch. Metrics: loss,
    grad_norm, clip_fraction, ratio, entropy (token means), policy_tokens, kl (with kl_beta).
    Module-level and pure so that the trainer jits it with explicit shardings and donation, and oresearcher.aot
    compiles exactly this function for a target."""
    aggregation = get_loss_aggregation(cfg.aggregation)

    def update(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        mask = batch["policy_mask"].astype(bool)
        batch = dict(batch, loss_weights=aggregation(mask, cfg), metric_weights=token_weights(mask))

        def loss_fn(p, mb):
            m = nnx.merge(model_def, p, rest)
            logp, entropy = target_logprobs(m, mb, cfg.temperature, cfg.logprob_chunk, mb["policy_index"],
                                            with_entropy=True)
            view = policy_view(mb)
            loss, metrics = grpo_objective(logp, view, cfg)
            metrics["entropy"] = aggregate(entropy, view["metric_weights"])
            return loss, metrics

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if microbatches == 1:
            (loss, metrics), grads = grad_fn(params, batch)
        else:
            micro = jax.tree.map(lambda x: _split_rows(x, microbatches), batch)
            pin = _pin_like(params, model)

            def body(carry, mb):
                (loss, metrics), grads = grad_fn(params, mb)
                loss, metrics, grads = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return (loss, metrics, pin(grads)), None

            (loss0, metrics0), grads0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
            zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), (loss0, metrics0, grads0))
            zeros = (zeros[0], zeros[1], pin(zeros[2]))
            (loss, metrics, grads), _ = jax.lax.scan(body, zeros, micro)
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        optimizer.update(model, grads)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return nnx.state((model, optimizer)), metrics

    return update


class Updater:
    """The jitted update for one (model, optimizer): explicit in/out shardings (the new state keeps the old
    state's, the metrics are replicated), the state donated so parameters and Adam moments are updated in place,
    and one compile per (microbatch count, batch layout). `updater(model, optimizer, batch)` applies one optimizer
    step to the placed minibatch `batch` and returns its metrics (device arrays)."""

    def __init__(self, model, optimizer, cfg: GRPOConfig, mesh):
        self.graphdef, state = nnx.split((model, optimizer))
        # Parameters (and the Adam moments made from them) are already on the mesh; what is not (the optimizer's
        # step counter, made on one device) is replicated over it, so every input of the update shares one mesh.
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        on_mesh = lambda x: isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
        self.state_shardings = jax.tree.map(lambda x: x.sharding if on_mesh(x) else replicated, state)
        nnx.update((model, optimizer), jax.device_put(state, self.state_shardings))
        self.cfg, self.mesh = cfg, mesh
        self.batch_shards = batch_shards(mesh)
        self._compiled: dict = {}

    def __call__(self, model, optimizer, batch: dict) -> dict:
        rows, length = batch["input_ids"].shape
        k = num_microbatches(rows, length, self.cfg, self.batch_shards)
        key = (k, tuple(sorted((name, x.sharding.spec) for name, x in batch.items())))
        if key not in self._compiled:
            replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            self._compiled[key] = jax.jit(
                update_fn(self.graphdef, self.cfg, k), donate_argnums=0,
                in_shardings=(self.state_shardings, {name: x.sharding for name, x in batch.items()}),
                out_shardings=(self.state_shardings, replicated))
        state, metrics = self._compiled[key](nnx.state((model, optimizer)), batch)
        nnx.update((model, optimizer), state)
        metrics["microbatches"] = k
        return metrics


def batch_shards(mesh) -> int:
    """How many ways a batch's rows are split: the sizes of the mesh axes activation_batch maps to."""
    spec = sharding.logical_to_spec(("activation_batch",), mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in axes)


_UPDATERS: dict[int, tuple] = {}


def train_step(model, optimizer, batch, cfg: GRPOConfig):
    """One GRPO optimizer step on the placed minibatch `batch` with the Updater of (model, optimizer) (made on
    first use, on the model's mesh or a one-device mesh where its parameters live); returns the metrics."""
    entry = _UPDATERS.get(id(optimizer))
    if entry is None or entry[0]() is not optimizer or entry[1].cfg != cfg:
        mesh = model.mesh
        if mesh is None:
            device = next(iter(jax.tree.leaves(nnx.state(model))[0].devices()))
            mesh = sharding.make_mesh({"data": 1}, devices=[device])
        entry = (weakref.ref(optimizer), Updater(model, optimizer, cfg, mesh))
        _UPDATERS[id(optimizer)] = entry
        weakref.finalize(optimizer, _UPDATERS.pop, id(optimizer), None)
    return entry[1](model, optimizer, batch)


@functools.partial(nnx.jit, static_argnames=("temperature", "chunk"))
def reference_logprobs(model, batch, temperature: float, chunk: int):
    """A frozen policy's logprobs at the policy positions, [B, P]: the reference's (the k3 KL term) or the
    trainer's own before an update (prox_logp, the decoupled objective)."""
    return target_logprobs(model, batch, temperature, chunk, batch["policy_index"])


def place_batch(batch: dict, mesh) -> dict:
    """Every [B, ...] host array of a batch onto the mesh: batch over (data, fsdp), length over sequence. Every
    process holds the whole batch (multi-host RL exchanges the episodes) and places only the shards its own
    devices hold: nothing crosses hosts."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        axes = ("activation_batch", "activation_length")[:v.ndim]
        out[k] = jax.make_array_from_callback(v.shape, sharding.logical_sharding(axes, mesh, None, v.shape),
                                              lambda index, v=v: v[index])
    return out

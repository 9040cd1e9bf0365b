"""AdamW with warmup + cosine decay, and gradient accumulation over microbatches with a true token mean.

    tx, schedule = make_optimizer(config.optim, total_steps)
    loss, grads, tokens = accumulate_gradients(loss_sums, params, batch, num_microbatches)

config.optim keys: lr (peak), warmup_fraction (of total steps; or warmup_steps if > 0), final_lr_fraction
(cosine floor as a fraction of lr), b1, b2, eps, weight_decay, grad_clip (global norm; 0 = off).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def schedule_from_config(optim, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr, then cosine lr -> lr * final_lr_fraction at `total_steps`."""
    warmup = int(optim.get("warmup_steps", 0) or round(float(optim.warmup_fraction) * total_steps))
    warmup = min(max(warmup, 0), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(optim.lr), warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=float(optim.lr) * float(optim.final_lr_fraction))


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW with optional global-norm clipping, its learning-rate schedule)."""
    schedule = schedule_from_config(optim, total_steps)
    parts = []
    if float(optim.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
    parts.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
                             weight_decay=float(optim.weight_decay), mask=_decay_mask))
    return optax.chain(*parts), schedule


def _decay_mask(params):
    """Weight decay on weight matrices and embeddings, not on norms or biases. Told apart by name, not by rank:
    stacked layer params carry a leading layer axis, so a per-layer norm is 2-D like the embedding."""
    def decays(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name.endswith("norm") or name in ("bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down"))
    return jax.tree_util.tree_map_with_path(decays, params)


def accumulate_gradients(loss_sums: Callable, params, batch: dict, num_microbatches: int):
    """Gradient of the token-mean loss over the whole batch, computed in `num_microbatches` sequential pieces.

    loss_sums(params, microbatch) -> (sum of per-token losses, number of loss tokens). The result is
        loss = sum_i S_i / sum_i N_i,   grads = sum_i dS_i / sum_i N_i
    i.e. exactly the gradient of the full batch's token mean (not a mean of microbatch means, which would
    over-weight microbatches with few loss tokens). Returns (loss, grads, total tokens).
    Batch arrays are [B, ...] with B divisible by num_microbatches; microbatch i is the contiguous row block
    [i*B/n, (i+1)*B/n).
    """
    grad_fn = jax.value_and_grad(lambda p, mb: loss_sums(p, mb), has_aux=True)
    if num_microbatches == 1:
        (total, count), grads = grad_fn(params, batch)
    else:
        def split(x):
            if x.shape[0] % num_microbatches:
                raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={num_microbatches}")
            return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

        micro = jax.tree.map(split, batch)

        def body(carry, mb):
            g_acc, s_acc, n_acc = carry
            (s, n), g = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, total, count), _ = jax.lax.scan(body, init, micro)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    return total / denom, grads, count

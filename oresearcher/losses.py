"""Token log-probabilities and the masked next-token loss, with the vocabulary projection chunked over the sequence.

    logp = token_logprobs(model, batch, chunk=512)          # float32 [B, T]: log p(targets[b, t] | prefix)
    loss_sum, tokens = cross_entropy_sums(model, batch)     # sum over unmasked tokens, and how many there are
    loss = masked_mean(values, mask)                        # token mean

`batch` holds int32 [B, T] arrays "input_ids", "targets" (the next token at every position), "positions",
"segment_ids" (packed rows) and bool/float [B, T] "loss_mask".

Why chunked: the logits of a 64k-token row of a 152k-vocabulary model are 64k x 152k x 4 bytes = 39 GB. The
final hidden states [B, T, D] are small, so the projection runs in `chunk`-long pieces of the sequence under
`jax.lax.map`; each piece is rematerialised (`jax.checkpoint`) so the backward pass recomputes that piece's
logits instead of keeping all of them. Peak memory is then B x chunk x V floats, whatever T is.

Why sums and not means: with packing and gradient accumulation, the loss we want is the mean over every unmasked
token of the whole (accumulated) batch. Microbatches return (sum, count); the caller divides once at the end
(see oresearcher.optim.accumulate_gradients), so a microbatch with many tokens weighs more, as it should.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _pad_to_multiple(x: Array, multiple: int, axis: int = 1) -> Array:
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad)


@jax.custom_vjp
def picked_logprobs(logits: Array, targets: Array) -> Array:
    """log softmax(logits)[targets]: float32 logits [..., V], int targets [...] -> float32 [...].

    Its own gradient, g * (onehot(targets) - softmax(logits)), is one elementwise pass over the forward pass's
    exp(logits - max). Left to autodiff, the pick's transpose also scatters into a zero-filled [..., V] array: one
    more [..., V] array written and read (400 MB at 2048 tokens x 49k vocabulary).
    A target outside [0, V) picks nothing: its value is undefined and its gradient is -g * softmax.
    """
    return _picked_fwd(logits, targets)[0]


def _picked_fwd(logits, targets):
    shift = logits.max(axis=-1, keepdims=True)
    exp = jnp.exp(logits - shift)  # kept for the backward pass: exp is the dear part, computed once
    total = exp.sum(axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - shift[..., 0] - jnp.log(total), (exp, total, targets)


def _picked_bwd(res, g):
    exp, total, targets = res
    onehot = jax.lax.broadcasted_iota(jnp.int32, exp.shape, exp.ndim - 1) == targets[..., None]
    d_logits = g[..., None] * onehot.astype(exp.dtype) - (g / total)[..., None] * exp
    return d_logits, np.zeros(np.shape(targets), jax.dtypes.float0)


picked_logprobs.defvjp(_picked_fwd, _picked_bwd)


def logprobs_from_hidden(unembed, hidden: Array, targets: Array, chunk: int = 512,
                         temperature: float = 1.0, remat: bool = True) -> Array:
    """log softmax(unembed(hidden) / temperature)[targets]: float32 [B, T].

    hidden [B, T, D] (final-normed), targets int32 [B, T]; `unembed` maps [B, c, D] -> float32 logits [B, c, V].
    T need not divide by `chunk` (the tail chunk is padded and its outputs dropped). remat=False keeps every
    chunk's logits for the backward pass (faster when [B, T, V] fits in memory: small models, CPU).
    """
    b, t, d = hidden.shape
    chunk = max(1, min(chunk, t))
    n = -(-t // chunk)

    def one_chunk(args):
        h_c, y_c = args
        logits = unembed(h_c).astype(jnp.float32)
        if temperature != 1.0:
            logits = logits / temperature
        return picked_logprobs(logits, y_c)

    if remat:  # backward recomputes each chunk's logits rather than storing [n, B, c, V]
        one_chunk = jax.checkpoint(one_chunk)
    if n == 1:  # one chunk: no loop around it
        return one_chunk((hidden, targets))
    h = _pad_to_multiple(hidden, chunk).reshape(b, n, chunk, d).swapaxes(0, 1)      # [n, B, c, D]
    y = _pad_to_multiple(targets, chunk).reshape(b, n, chunk).swapaxes(0, 1)        # [n, B, c]
    out = jax.lax.map(one_chunk, (h, y))                                            # [n, B, c]
    return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def token_logprobs(model, batch: dict, chunk: int = 512, temperature: float = 1.0, remat: bool = True) -> Array:
    """float32 [B, T] log-probability of batch["targets"] under the model (shared by SFT and RL)."""
    hidden = model.hidden(batch["input_ids"], batch.get("positions"), batch.get("segment_ids"))
    return logprobs_from_hidden(model.unembed, hidden, batch["targets"], chunk, temperature, remat)


def masked_sum(values: Array, mask: Array) -> tuple[Array, Array]:
    """(sum of values where mask, number of mask tokens), both float32 scalars."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * mask), jnp.sum(mask)


def masked_mean(values: Array, mask: Array) -> Array:
    """Token mean of values [B, T] over mask [B, T]; 0 when nothing is unmasked."""
    total, count = masked_sum(values, mask)
    return total / jnp.maximum(count, 1.0)


def cross_entropy_sums(model, batch: dict, chunk: int = 512, remat: bool = True) -> tuple[Array, Array]:
    """(summed next-token cross-entropy over loss_mask tokens, number of those tokens)."""
    logp = token_logprobs(model, batch, chunk, remat=remat)
    return masked_sum(-logp, batch["loss_mask"])

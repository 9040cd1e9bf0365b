"""Batched generation on the (sharded) decoder with a KV cache: prefill, then a jitted decode loop.

    sampler = Sampler(model, tokenizer)
    outs = sampler.generate([ids_a, ids_b], SamplingParams(temperature=0.0, max_new_tokens=64))
    outs[0].tokens, outs[0].logprobs, outs[0].finish_reason            # "stop" | "eos" | "length"

Multi-turn, token-in/token-out (what rollouts use): a Session keeps every row's token ids and its KV cache. A
`step` prefills whatever each row has that the cache has not seen yet (the prompt; later the last sampled token
plus the observation tokens appended by the caller) and decodes until a stop. Sampled ids are kept as ids and
never re-tokenised from text.

    session = sampler.start(prompts, max_len=4096)
    outs = sampler.step(session, rows=[0, 1], params=...)        # stops at </web_search> ...
    session.tokens[0].extend(observation_ids)                      # the caller's (masked) observation
    outs = sampler.step(session, rows=[0], params=...)            # continues row 0 where it stopped

Prompts usually share a long prefix (the system prompt and chat template of every rollout; all of a GRPO group's
rows are the same prompt). `start` prefills the rows' common prefix once, for one row, and copies its KV entries
to every row; `step` then prefills only what each row has of its own (the question). Rollouts of G rows of Q
questions thus prefill the system prompt once instead of G x Q times (share_prefix=False turns this off).

Shapes are bucketed so one compiled program serves many requests: the batch to a power of two, each prefill chunk
to a power of two (at least 16, at most `prefill_chunk`; longer inputs are prefilled chunk by chunk, the last
chunk only as long as the bucket of what is left), the decode buffer to a power of two, the cache's slots to a
power of two (at least 128, at most max_len rounded up to 128). The cache holds only the slots its rows can
reach so far and grows (doubling, copied once) when a call may write past them, so a session sized for a long
episode (32K tokens on a GPU preset) neither holds nor reads 32K slots per token while its rows are short, and
attention reads the cache in place: reading a window of a larger cache copies that window for every layer at
every token (SmolLM2 at batch 32: 23 ms of thread time per token; 244 -> 274-284 tok/s without the copies).
One exception, batch 1: there XLA:CPU rewrites the cache update into a dynamic-update-slice and duplicates it
into attention's fusion, copying every layer's cache four times per token; a spare block of 128 slots that
attention never reads keeps the update single (attention then reads a slice). The decode loop is a
`lax.while_loop` that exits as soon as every row has stopped; temperature, top-p, top-k and the step budget are
runtime values, not compile keys.

Stop strings are matched on the generated *bytes*, also when a stop string spans several tokens or ends inside
one: an Aho-Corasick automaton over the stop strings' bytes is folded into a table
    next_state[state, token] (= MATCH when the token's bytes complete a stop string from `state`)
so the loop checks stops with one gather per step. A row stops after the token that completes a stop string
(the token is kept whole, so the text may run a few characters past the stop string), or after an EOS id.

Logprobs are log softmax(logits / temperature) of the sampled token (log softmax(logits) when greedy), over the
full vocabulary: the same quantity the GRPO trainer computes, so the first update's ratio is 1 up to numerics.
"""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

STOP_STRINGS = ("</web_search>", "</crawl_page>", "</suggested_answer>")
FINISH_REASONS = ("length", "stop", "eos")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0           # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                     # 0 = off
    max_new_tokens: int = 256
    stop: tuple[str, ...] = STOP_STRINGS
    seed: int = 0


@dataclasses.dataclass
class Completion:
    tokens: list[int]                  # generated ids (the stop-completing token included)
    logprobs: list[float]              # one per generated token
    finish_reason: str                 # "stop" | "eos" | "length"


@dataclasses.dataclass
class Session:
    """Per-row token ids (prompt, generations, appended observations) and the KV cache holding a prefix of them."""
    tokens: list[list[int]]
    cache: dict
    written: np.ndarray                # [B_bucket] int: tokens of each row already in the cache
    max_len: int                       # tokens per row

    @property
    def window(self) -> int:
        """Cache slots attention reads: all of the cache but the batch-1 spare block (see the module docstring).
        Grows with the rows, up to max_len rounded up to 128."""
        return self.cache["segment_ids"].shape[1] - _spare(len(self.written))


# ------------------------------------------------------------------------------------------ stop automaton
def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each token id stands for. Byte-level BPE tokenizers (SmolLM2, Qwen, Llama 3) decode single ids
    exactly; partial UTF-8 sequences come back as U+FFFD, which never matches an ASCII stop string."""
    if hasattr(tokenizer, "token_bytes"):
        return list(tokenizer.token_bytes())
    return [tokenizer.decode([i]).encode("utf-8") for i in range(tokenizer.vocab_size)]


def stop_table(stop: Sequence[str], vocab: list[bytes]) -> np.ndarray:
    """int32 [n_states + 1, V]: the automaton state after reading token v's bytes from `state`; n_states (MATCH)
    when a stop string is completed anywhere inside the token. State 0 is "nothing matched yet"."""
    patterns = [s.encode("utf-8") for s in stop if s]
    # trie
    goto: list[dict[int, int]] = [{}]
    accept = [False]
    for p in patterns:
        s = 0
        for byte in p:
            if byte not in goto[s]:
                goto.append({})
                accept.append(False)
                goto[s][byte] = len(goto) - 1
            s = goto[s][byte]
        accept[s] = True
    n = len(goto)
    # breadth-first failure links -> full DFA delta [n, 256]
    delta = np.zeros((n, 256), np.int32)
    fail = [0] * n
    order, queue = [], [0]
    while queue:
        s = queue.pop(0)
        order.append(s)
        for byte in range(256):
            if byte in goto[s]:
                t = goto[s][byte]
                delta[s, byte] = t
                if s != 0:
                    fail[t] = delta[fail[s], byte]
                    accept[t] = accept[t] or accept[fail[t]]
                queue.append(t)
            elif s != 0:
                delta[s, byte] = delta[fail[s], byte]
    accept_arr = np.array(accept)
    # run every token from every state at once, byte position by byte position
    v = len(vocab)
    lengths = np.array([len(b) for b in vocab])
    width = int(lengths.max()) if v else 0
    buf = np.full((v, max(width, 1)), -1, np.int32)
    for i, b in enumerate(vocab):
        buf[i, :len(b)] = np.frombuffer(b, np.uint8)
    states = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], (n, v)).copy()
    matched = np.zeros((n, v), bool)
    for pos in range(width):
        live = np.nonzero(lengths > pos)[0]
        byte = buf[live, pos]
        new = delta[states[:, live], byte[None, :]]
        matched[:, live] |= accept_arr[new]
        states[:, live] = new
    table = np.where(matched, n, states).astype(np.int32)
    return np.concatenate([table, np.full((1, v), n, np.int32)], axis=0)   # MATCH is absorbing


# ------------------------------------------------------------------------------------------------ sampling
def _filter_logits(logits, top_p, top_k):
    """Mask (to -inf) tokens outside the top-k, then outside the smallest set with probability mass >= top_p.
    top_p, top_k [B]: one per row; a row with top_p 1 and top_k 0 is left exactly as it is (not merely up to the
    rounding of its cumulative sum), so that rows without a filter draw the same beside rows with one."""
    v = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(desc, (k - 1)[:, None], -1)
    desc = jnp.where(jnp.arange(v)[None] < k[:, None], desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs          # mass strictly above each sorted token
    kept = jnp.maximum(jnp.sum(before < top_p[:, None], axis=-1), 1)
    pth = jnp.take_along_axis(desc, (kept - 1)[:, None], -1)
    off = ((top_p >= 1.0) & (top_k <= 0))[:, None]
    return jnp.where(off | (logits >= jnp.maximum(kth, pth)), logits, -jnp.inf)


def _first_max(x, top):
    """The first index of each row's maximum `top` [B, 1]: jnp.argmax's value, as one plain reduction (XLA:CPU
    runs argmax's paired value-and-index reduction several times slower; it was a tenth of a decode step)."""
    v = x.shape[-1]
    return jnp.minimum(jnp.min(jnp.where(x == top, jnp.arange(v), v), axis=-1), v - 1).astype(jnp.int32)


def _uniforms(key, rows: int):
    """[rows, 1] uniform draws: from one key (the Sampler's: a step's draws for all rows), or one key per row
    (keys [rows], the engine's: a row's draw then depends on its own key only, not on the rows beside it)."""
    if key.ndim == 0:
        return jax.random.uniform(key, (rows, 1))
    return jax.vmap(lambda k: jax.random.uniform(k, (1,)))(key)


def _sample(logits, key, temperature, top_p, top_k, use_filter: bool):
    """logits [B, V] float32, key (one, or [B]: one per row), temperature / top_p / top_k (scalars, or [B]: the
    engine's rows each serve their own request) -> (token [B] int32, logprob [B] float32)."""
    b = logits.shape[0]
    temperature, top_p, top_k = (jnp.broadcast_to(x, (b,)) for x in (temperature, top_p, top_k))
    greedy = temperature <= 0.0
    scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    # log softmax of the chosen token only, computed as jax.nn.log_softmax does: (x - max) - log sum exp(x - max)
    top = jnp.max(scaled, axis=-1, keepdims=True)
    log_sum = jnp.log(jnp.sum(jnp.exp(scaled - top), axis=-1))

    def sample(_):
        # Inverse-CDF sampling: one uniform per row instead of B x V Gumbel draws (which cost more than a small
        # model's whole forward on CPU). Exact up to float rounding of the cumulative sum.
        filtered = _filter_logits(scaled, top_p, top_k) if use_filter else scaled
        cdf = jnp.cumsum(jax.nn.softmax(filtered, axis=-1), axis=-1)
        u = _uniforms(key, b) * cdf[:, -1:]
        drawn = jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)
        return jnp.where(greedy, _first_max(scaled, top), drawn)

    # an all-greedy batch (every Sampler call at temperature 0) skips the softmax, cumulative sum and draw
    token = jax.lax.cond(jnp.all(greedy), lambda _: _first_max(scaled, top), sample, None)
    return token, (jnp.take_along_axis(scaled, token[:, None], -1) - top)[:, 0] - log_sum


# --------------------------------------------------------------------------------------- cached forward
# The decoder stores its layers stacked on a leading axis and runs them with lax.scan, which is what training
# wants. For decoding on CPU that costs a copy of every layer's weights per token (a dynamic slice cannot feed a
# matmul in place), about half the time of a step. The sampler therefore keeps the stack sliced into per-layer
# arrays (`Sampler.weights`: made once per parameter version, not per call or per token) and one K/V buffer per
# layer, then runs the decoder's own layer function (`Decoder._layer_fn`) layer by layer: the same maths as
# `model(ids, positions=, cache=)`, whose outputs the parity tests compare against transformers. On CPU the copy
# is made in a decode layout (decoder.decode_layout) that a decode step streams faster: packed for the
# cpu_kernels matmul where it is built, the unembedding included, else XLA's transposed blocks with a tied
# unembedding kept transposed to [D, V] (x @ W reads it faster than x @ E^T).

def init_cache(model, batch: int, slots: int) -> dict:
    """{"k", "v": tuple of L arrays [B, K, S, hd], "segment_ids": [B, S] (0 = slot never written)}, placed per
    the model's mesh and rules (cache_batch, cache_kv_heads, cache_length, head_dim) when it has a mesh."""
    cfg = model.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    kv = lambda: jnp.zeros(shape, dtype)
    seg = jnp.zeros((batch, slots), jnp.int32)
    if model.mesh is not None:
        from oresearcher import sharding
        kv_sharding = sharding.logical_sharding(("cache_batch", "cache_kv_heads", "cache_length", "head_dim"),
                                                model.mesh, model.rules, shape)
        kv = lambda: jax.device_put(jnp.zeros(shape, dtype), kv_sharding)
        seg = jax.device_put(seg, sharding.logical_sharding(("cache_batch", "cache_length"), model.mesh,
                                                            model.rules, seg.shape))
    return {"k": tuple(kv() for _ in range(cfg.num_layers)), "v": tuple(kv() for _ in range(cfg.num_layers)),
            "segment_ids": seg}


def _unstack(stacked: dict, head, *, layout: str, blocks: int, tied: bool) -> dict:
    """{name: [L, ...]} -> {"layers": L dicts {name: [...]}, each layer's own arrays (a copy; jitted once),
    "head": None}; with layout "panels" or "blocks", each layer in that decode layout (decoder.decode_layout) and
    "head" the unembedding as the layout reads it (head: the embedding [V, D] if tied, else lm_head [D, V])."""
    from oresearcher.model import cpu_kernels
    from oresearcher.model.decoder import decode_layout
    n = next(iter(stacked.values())).shape[0]
    layers = tuple({name: w[i] for name, w in stacked.items()} for i in range(n))
    if layout == "own":
        return {"layers": layers, "head": None}
    layers = tuple(decode_layout(p, layout, blocks) for p in layers)
    head = head.T if tied else head      # [D, V]
    if layout == "panels" and cpu_kernels.packable(head):
        return {"layers": layers, "head": cpu_kernels.pack(head)}
    # otherwise [D, V] in one piece: x @ W streams it as fast as blocks do and keeps the logits [B, V] without a
    # transpose; an untied lm_head already is [D, V], and None keeps the sampler from holding on to it
    return {"layers": layers, "head": head if tied else None}


def embed(model, weights: dict, tokens):
    """The tokens' embeddings [B, T, D] in the compute dtype: from the weight copy's "embed" where it has one
    (the inference layout, engine/layout.py), else from the model's parameter."""
    table = weights.get("embed")
    table = model.embed[...] if table is None else table
    x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(model.cfg.compute_dtype))
    return model._constrain(x, ("activation_batch", "activation_length", "activation_embed"))


def final_norm(model, weights: dict, x):
    from oresearcher.model.decoder import rms_norm
    w = weights.get("final_norm")
    return rms_norm(x, model.final_norm[...] if w is None else w, model.cfg.rms_norm_eps)


def head_logits(model, weights: dict, hidden):
    """float32 logits [B, T, V]: the model's unembedding with the weight copy's head, or with the copy's
    embedding when the inference layout's model is tied (its head is then None)."""
    if weights["head"] is None and weights.get("embed") is not None:
        cdt = jnp.dtype(model.cfg.compute_dtype)
        out = jnp.einsum("btd,vd->btv", hidden, weights["embed"].astype(cdt), preferred_element_type=jnp.float32)
        return model._constrain(out, ("activation_batch", "activation_length", "activation_vocab"))
    return model.unembed(hidden, weights["head"])


def _cached_forward(model, weights: dict, cache: dict, tokens, positions, window: int):
    """Hidden states [B, T, D] for tokens [B, T] written at slots positions [B, T] (slot == S: dropped), and the
    updated cache. Token (b, t) attends to the written slots s <= positions[b, t] of its row, all of which lie in
    the first `window` slots (the caller sizes it so)."""
    from oresearcher.model.decoder import rope_frequencies

    cfg = model.cfg
    b = tokens.shape[0]
    x = embed(model, weights, tokens)
    layers = weights["layers"]
    rows = jnp.arange(b)[:, None]
    segments = cache["segment_ids"].at[rows, positions].set(1, mode="drop")
    slots = jnp.arange(window)
    mask = (slots[None, None, :] <= positions[:, :, None]) & (segments[:, None, :window] == 1)
    # weights packed for the CPU kernels: a decode step (one token per row) attends with the kernel too
    packed = "fused_qkv" in layers[0] and not isinstance(layers[0]["fused_qkv"], tuple)
    layer = model._layer_fn(positions, mask, rope_frequencies(cfg), window=window,
                            cpu_attention=packed and tokens.shape[1] == 1)
    ks, vs = [], []
    for p, k, v in zip(layers, cache["k"], cache["v"]):
        x, (k, v) = layer(x, p, (k, v))
        ks.append(k)
        vs.append(v)
    x = final_norm(model, weights, x)
    return x, {"k": tuple(ks), "v": tuple(vs), "segment_ids": segments}


def _prefill(graphdef, state, weights, cache, tokens, positions, last_col, *, window: int):
    """Write tokens [B, C] at positions [B, C] (a position == cache length is a padding slot: dropped) and return
    the logits [B, V] at column last_col[b] (the row's last real token of this chunk)."""
    model = nnx.merge(graphdef, state)
    hidden, cache = _cached_forward(model, weights, cache, tokens, positions, window)
    last = jnp.take_along_axis(hidden, last_col[:, None, None], axis=1)
    return head_logits(model, weights, last)[:, 0], cache


def take_token(logits, key, i, live, out_t, out_lp, count, stop_state, finish, budget, table, eos, temperature,
               top_p, top_k, use_filter: bool):
    """One sampled token per row, the bookkeeping both decoders share: sample from logits [B, V] (key: one, or
    one per row); for the live rows write it and its logprob at column i of out_t / out_lp [B, N], count it,
    advance the stop automaton (table [M + 1, V], state M = a stop string ended) and set finish (an index into
    FINISH_REASONS) when the row hits a stop string, EOS (eos [V] bool) or its budget. Returns (tokens [B],
    out_t, out_lp, count, stop_state, finish, ended [B])."""
    tok, lp = _sample(logits, key, temperature, top_p, top_k, use_filter)
    out_t = jax.lax.dynamic_update_slice(out_t, jnp.where(live, tok, 0)[:, None], (0, i))
    out_lp = jax.lax.dynamic_update_slice(out_lp, jnp.where(live, lp, 0.0)[:, None], (0, i))
    count = count + live
    stop_state = table[stop_state, tok]
    hit_stop = live & (stop_state == table.shape[0] - 1)
    hit_eos = live & eos[tok]
    hit_len = live & ~hit_stop & ~hit_eos & (count >= budget)
    finish = jnp.where(hit_stop, 1, jnp.where(hit_eos, 2, jnp.where(hit_len, 0, finish)))
    return tok, out_t, out_lp, count, stop_state, finish, hit_stop | hit_eos | hit_len


def _decode(graphdef, state, weights, cache, logits, pos, active, budget, key, temperature, top_p, top_k, table, eos,
            *, out_len: int, use_filter: bool, window: int):
    """Sample from `logits` [B, V], then feed each sampled token back until every row has stopped.

    pos [B]: the slot of the first sampled token; active [B] bool; budget [B]: max new tokens per row (<= out_len).
    Returns tokens [B, out_len], logprobs [B, out_len], count [B], finish [B] (index into FINISH_REASONS), cache.
    """
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]
    slots = cache["segment_ids"].shape[1]

    def emit(carry, logits):
        step, cache, _, pos, done, stop_state, out_t, out_lp, count, finish = carry
        tok, out_t, out_lp, count, stop_state, finish, ended = take_token(
            logits, jax.random.fold_in(key, step), step, ~done, out_t, out_lp, count, stop_state, finish, budget,
            table, eos, temperature, top_p, top_k, use_filter)
        return (step + 1, cache, tok, pos, done | ended, stop_state, out_t, out_lp, count, finish)

    def cond(carry):
        step, done = carry[0], carry[4]
        return (step < out_len) & ~jnp.all(done)

    def body(carry):
        step, cache, tok, pos, done = carry[:5]
        feed_pos = jnp.where(done, slots, pos)          # finished rows write nothing
        hidden, cache = _cached_forward(model, weights, cache, tok[:, None], feed_pos[:, None], window)
        carry = (step, cache, tok, pos + 1, done) + carry[5:]
        return emit(carry, head_logits(model, weights, hidden)[:, 0])

    done0 = ~active | (budget <= 0)
    init = (jnp.int32(0), cache, jnp.zeros((b,), jnp.int32), pos, done0, jnp.zeros((b,), jnp.int32),
            jnp.zeros((b, out_len), jnp.int32), jnp.zeros((b, out_len), jnp.float32), jnp.zeros((b,), jnp.int32),
            jnp.zeros((b,), jnp.int32))
    carry = jax.lax.while_loop(cond, body, emit(init, logits))
    _, cache, _, _, _, _, out_t, out_lp, count, finish = carry
    return out_t, out_lp, count, finish, cache


def _forget(memo: dict, of: list) -> None:
    if memo.get("of") is of:   # the copy made from the arrays just freed (not a newer one)
        memo.clear()


def _bucket(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, (n - 1)).bit_length())


SPARE_SLOTS = 128   # cache slots past the window at batch 1 (see the module docstring)


def _spare(batch: int) -> int:
    return SPARE_SLOTS if batch == 1 else 0


def _window(max_len: int, reach: int) -> int:
    """Cache slots attention reads when the furthest slot written is reach - 1: a power of two >= 128, at most
    max_len rounded up to a multiple of 128."""
    return min(-(-max_len // 128) * 128, _bucket(reach, 128))


def _grow(small: dict, big: dict) -> dict:
    """`big` (an empty cache with more slots; donated) with all of `small`'s slots copied to its front."""
    return jax.tree.map(lambda b, s: jax.lax.dynamic_update_slice(b, s, (0,) * b.ndim), big, small)


def _chunks(length: int, most: int, least: int):
    """(start, size) pieces covering `length` tokens: `most` long, the last one the bucket of what is left."""
    start = 0
    while start < length:
        size = min(most, _bucket(length - start, least))
        yield start, size
        start += size


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prompts' common token prefix, leaving every prompt at least one token of its own (the step
    that samples from a row needs a token to prefill)."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


def _copy_row(big, one, rows):
    """big [B, ...] with its `rows` (bool [B]) replaced by one [1, ...] (donated: updated in place)."""
    return jnp.where(rows.reshape((-1,) + (1,) * (big.ndim - 1)), one, big)


def _default_layout(model) -> str:
    devices = model.embed[...].devices()
    if next(iter(devices)).platform != "cpu" or len(devices) > 1:
        return "own"     # on a mesh: the inference layout (engine/layout.py)
    from oresearcher.model import cpu_kernels
    fp32 = jnp.dtype(model.cfg.compute_dtype) == jnp.float32 and model.embed[...].dtype == jnp.float32
    # the kernel is one custom call per product: it runs on one device, so a sharded model keeps XLA's dots
    return "panels" if fp32 and len(devices) == 1 and cpu_kernels.available() else "blocks"


class Sampler:
    """Generation for one model and tokenizer. `model` may be sharded (sharding.shard_model); the cache then
    follows the model's mesh and rules. Parameters are read from the model at every call, so a model being
    trained in place is always sampled at its current weights."""

    def __init__(self, model, tokenizer=None, *, eos_ids: Sequence[int] | None = None, prefill_chunk: int = 512,
                 min_bucket: int = 16, share_prefix: bool = True, weight_layout: str | None = None,
                 weight_blocks: int = 2, slots: int = 0, tensor: int = 0):
        """`tokenizer` supplies the token bytes for stop strings and the EOS ids (tokenizer.stop_ids); without
        one, only `eos_ids` (default: the model config's eos_token_id) stop a row. Pass eos_ids=() to never stop
        on EOS. share_prefix: prefill the prompts' common prefix once per session (see the module docstring).
        weight_layout: the layout of the per-layer weight copy (decoder.decode_layout): "panels" (packed for
        the cpu_kernels matmul; decode steps then attend with cpu_kernels.attention too), "blocks" (transposed,
        `weight_blocks` row blocks per matrix) or "own" (the decoder's training layout). Default: "panels" for
        an fp32 model on one CPU device where the kernels are built, "own" on accelerators and on any mesh of
        more than one device. "own" on such a mesh is the inference layout (engine/layout.py): the copy in the
        compute dtype, tensor-parallel over `tensor` devices (0 = the largest that divides the heads), the
        batch (`slots` rows, 0 = any) over the rest."""
        self.weight_layout = weight_layout or _default_layout(model)
        if self.weight_layout not in ("panels", "blocks", "own"):
            raise ValueError(f"Sampler: weight_layout must be 'panels', 'blocks' or 'own', got {weight_layout!r}")
        if self.weight_layout == "panels":
            from oresearcher.model import cpu_kernels
            if not cpu_kernels.available():
                raise RuntimeError(f"Sampler: weight_layout='panels' needs the CPU kernels, which are "
                                   f"unavailable: {cpu_kernels.unavailable_reason()}")
        self.weight_blocks = weight_blocks
        self.model = model
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk
        self.min_bucket = min_bucket
        self.share_prefix = share_prefix
        self._vocab_bytes = None
        self._tables: dict[tuple[str, ...], jax.Array] = {}
        if eos_ids is None:
            eos_ids = (getattr(tokenizer, "stop_ids", None) or [tokenizer.eos_id]) if tokenizer is not None \
                else [getattr(model.cfg, "eos_token_id", None)]
        eos = np.zeros((model.cfg.vocab_size,), bool)
        for i in eos_ids:
            if i is not None and 0 <= i < eos.size:
                eos[i] = True
        self._eos = jnp.asarray(eos)
        self._prefill = jax.jit(_prefill, static_argnums=0, donate_argnums=3, static_argnames=("window",))
        self._decode = jax.jit(_decode, static_argnums=0, donate_argnums=3,
                               static_argnames=("out_len", "use_filter", "window"))
        self._unstack = jax.jit(_unstack, static_argnames=("layout", "blocks", "tied"))
        self._grow = jax.jit(_grow, donate_argnums=1)
        self._copy_row = jax.jit(_copy_row, donate_argnums=0)
        self._weights: dict = {}    # {"of": weakrefs to the parameters, "weights": their per-layer copy}
        self.plan = None
        if self.weight_layout == "own":
            from oresearcher.engine import layout
            self.plan = layout.plan_for(model, slots=slots, tensor=tensor)
            self._copier = layout.Copier(model.cfg, self.plan) if self.plan is not None else None
            self.placed = layout.placed(model, self.plan)
        else:
            self.placed = model

    def split(self):
        """(graphdef, state) for the programs: the model's, with the inference layout's mesh and rules on a mesh."""
        from oresearcher.engine import layout
        return layout.view(self.model, self.plan)

    def rows(self, n: int) -> int:
        """A batch of n rows padded to what the layout splits evenly (a multiple of its data axis)."""
        return n if self.plan is None else self.plan.rows(n)

    def weights(self) -> dict:
        """{"layers": per-layer parameter dicts, "head": the unembedding as [D, V] or None; in the inference
        layout also "embed" and "final_norm"}: made once per
        parameter version. The copy lives as long as the parameters it was made from: when a training step
        replaces them and the old arrays are freed, it is dropped too, so a trainer holds no second copy of the
        weights between rollouts."""
        model = self.model
        tied = model.cfg.tie_embeddings
        head = model.embed[...] if tied else model.lm_head[...]
        stacked = model.layers.arrays()
        params = [*stacked.values(), head]
        if self.plan is not None:       # the inference layout copies these too
            params += [model.embed[...], model.final_norm[...]]
        of = self._weights.get("of")
        if of is None or len(of) != len(params) or any(r() is not a for r, a in zip(of, params)):
            self._weights.clear()
            if self.plan is not None:
                self._weights["weights"] = self._copier(stacked, model.embed[...], model.final_norm[...],
                                                        None if tied else head)
            else:
                self._weights["weights"] = self._unstack(stacked, head, layout=self.weight_layout,
                                                         blocks=self.weight_blocks, tied=tied)
            self._weights["of"] = of = [weakref.ref(a) for a in params]
            for a in params:
                weakref.finalize(a, _forget, self._weights, of)
        return self._weights["weights"]

    # ------------------------------------------------------------------------------------------ public API
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
                 max_len: int | None = None) -> list[Completion]:
        """One-shot generation for a batch of token-id prompts."""
        longest = max(len(p) for p in prompts)
        session = self.start(prompts, max_len or longest + params.max_new_tokens)
        return self.step(session, range(len(prompts)), params)

    def start(self, prompts: Sequence[Sequence[int]], max_len: int) -> Session:
        """A session of len(prompts) rows, each holding at most `max_len` tokens (prompt + everything after)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("Sampler.start: every prompt needs at least one token (got an empty prompt or batch)")
        longest = max(len(p) for p in prompts)
        if longest >= max_len:
            raise ValueError(f"Sampler.start: a prompt of {longest} tokens leaves no room under max_len={max_len}; "
                             f"raise max_len or shorten the prompt")
        b = self.rows(_bucket(len(prompts), 1))
        cache = init_cache(self.placed, b, _window(max_len, longest) + _spare(b))
        session = Session([list(p) for p in prompts], cache, np.zeros((b,), np.int64), max_len)
        n = common_prefix(prompts) if self.share_prefix and len(prompts) > 1 else 0
        if n >= self.min_bucket:
            self._prefill_shared(session, n)
        return session

    def _prefill_shared(self, session: Session, n: int) -> None:
        """Prefill the first n tokens (common to every row) for one row, then copy that row's K/V entries and
        segment ids into every row of the session's cache: the same computation at the same positions, so equal
        to prefilling each row up to float rounding."""
        slots, window = session.cache["segment_ids"].shape[1], session.window
        prefix = session.tokens[0][:n]
        one = init_cache(self.placed, 1, slots)
        graphdef, state = self.split()
        weights = self.weights()
        for start, size in _chunks(n, self.prefill_chunk, self.min_bucket):
            piece = prefix[start:start + size]
            tok = np.zeros((1, size), np.int32)
            pos = np.full((1, size), slots, np.int32)            # a position == slots is padding: dropped
            tok[0, :len(piece)] = piece
            pos[0, :len(piece)] = start + np.arange(len(piece))
            _, one = self._prefill(graphdef, state, weights, one, jnp.asarray(tok), jnp.asarray(pos),
                                   jnp.zeros((1,), np.int32), window=window)
        rows = jnp.asarray(np.arange(session.written.shape[0]) < len(session.tokens))   # bucket padding: empty
        cache = session.cache
        # one array at a time, each donated: the copy needs no second cache's worth of memory
        session.cache = {"k": tuple(self._copy_row(big, small, rows) for big, small in zip(cache["k"], one["k"])),
                         "v": tuple(self._copy_row(big, small, rows) for big, small in zip(cache["v"], one["v"])),
                         "segment_ids": self._copy_row(cache["segment_ids"], one["segment_ids"], rows)}
        session.written[:len(session.tokens)] = n

    def step(self, session: Session, rows: Sequence[int], params: SamplingParams,
             max_new_tokens: Sequence[int] | None = None) -> list[Completion]:
        """Prefill each listed row's unseen tokens and decode until it stops; appends the generated ids to
        session.tokens[row] and returns one Completion per listed row (in order). Every row stops by
        session.max_len tokens in total, and by `max_new_tokens[i]` for rows[i] if given (else
        params.max_new_tokens)."""
        rows = list(rows)
        if not rows:
            return []
        b = session.written.shape[0]
        active = np.zeros((b,), bool)
        active[rows] = True
        for r in rows:
            if len(session.tokens[r]) >= session.max_len:
                raise ValueError(f"Sampler.step: row {r} already holds {len(session.tokens[r])} tokens, the "
                                 f"session's max_len={session.max_len}; stop this row instead of continuing it")
        graphdef, state = self.split()
        weights = self.weights()
        # budgets: every row stops by the session's max_len, and by its own max_new_tokens
        room = np.array([session.max_len - len(session.tokens[r]) if active[r] else 0 for r in range(b)])
        limit = np.zeros((b,), np.int64)
        limit[rows] = params.max_new_tokens if max_new_tokens is None else np.asarray(max_new_tokens)
        budget = np.minimum(room, limit)
        # every slot this call may write (prefill and decode) must lie in the window: grow the cache if not
        reach = max(len(session.tokens[r]) + int(budget[r]) for r in rows)
        need = _window(session.max_len, reach)
        if need > session.window:
            session.cache = self._grow(session.cache, init_cache(self.placed, b, need + _spare(b)))
        slots, window = session.cache["segment_ids"].shape[1], session.window

        # prefill, chunk by chunk, each row from its first unseen token
        pending = [session.tokens[r][session.written[r]:] if active[r] else [] for r in range(b)]
        longest = max(len(p) for p in pending)
        if longest == 0:
            raise ValueError(f"Sampler.step: rows {rows} have no tokens to continue from")
        logits = None
        for start, chunk in _chunks(longest, self.prefill_chunk, self.min_bucket):
            tok = np.zeros((b, chunk), np.int32)
            pos = np.full((b, chunk), slots, np.int32)
            last = np.zeros((b,), np.int32)
            has = np.zeros((b,), bool)
            for r, p in enumerate(pending):
                piece = p[start:start + chunk]
                if piece:
                    tok[r, :len(piece)] = piece
                    pos[r, :len(piece)] = session.written[r] + start + np.arange(len(piece))
                    last[r] = len(piece) - 1
                    has[r] = start + len(piece) == len(p)     # this chunk holds the row's last pending token
            chunk_logits, session.cache = self._prefill(graphdef, state, weights, session.cache, jnp.asarray(tok),
                                                        jnp.asarray(pos), jnp.asarray(last), window=window)
            logits = chunk_logits if logits is None else jnp.where(jnp.asarray(has)[:, None], chunk_logits, logits)
        for r in rows:
            session.written[r] = len(session.tokens[r])

        # decode
        out_len = _bucket(int(budget.max()), self.min_bucket)
        use_filter = params.temperature > 0 and (params.top_p < 1.0 or params.top_k > 0)
        key = jax.random.key(params.seed)
        out_t, out_lp, count, finish, session.cache = self._decode(
            graphdef, state, weights, session.cache, logits, jnp.asarray(session.written, jnp.int32),
            jnp.asarray(active),
            jnp.asarray(budget, jnp.int32), key, jnp.float32(params.temperature), jnp.float32(params.top_p),
            jnp.int32(params.top_k), self.stop_table(params.stop), self._eos, out_len=out_len,
            use_filter=use_filter, window=window)
        out_t, out_lp, count, finish = map(np.asarray, jax.device_get((out_t, out_lp, count, finish)))

        completions = []
        for r in rows:
            n = int(count[r])
            ids = out_t[r, :n].tolist()
            session.tokens[r].extend(ids)
            # every generated token but the last has been fed back, so is in the cache
            session.written[r] += max(n - 1, 0)
            completions.append(Completion(ids, out_lp[r, :n].tolist(), FINISH_REASONS[int(finish[r])]))
        return completions

    def stop_table(self, stop: Sequence[str]) -> jax.Array:
        key = tuple(stop)
        if key and self.tokenizer is None:
            raise ValueError(f"stop strings {key} need a tokenizer: build Sampler(model, tokenizer)")
        if key not in self._tables:
            if not key:
                self._tables[key] = jnp.zeros((2, self.model.cfg.vocab_size), jnp.int32)
                return self._tables[key]
            if self._vocab_bytes is None:
                self._vocab_bytes = token_bytes(self.tokenizer)
                self._vocab_bytes += [b""] * (self.model.cfg.vocab_size - len(self._vocab_bytes))
            self._tables[key] = jnp.asarray(stop_table(key, self._vocab_bytes))
        return self._tables[key]

"""The decoder: one Flax NNX model for Llama, Qwen2/2.5 and Qwen3, used by the trainer, sampler and server.

    model = Decoder(cfg, rngs=nnx.Rngs(0))
    logits = model(input_ids)                                   # int32 [B, T] -> float32 [B, T, V]
    logits = model(input_ids, positions=pos, segment_ids=seg)   # packed sequences: attention stays in-segment
    hidden = model.hidden(input_ids); logits = model.unembed(hidden)
    cache = model.init_cache(B, S)
    logits, cache = model(prompt_ids, positions=pos, cache=cache)  # prefill / decode: K/V written at `pos`

Layers are one stack of parameters with a leading layer axis, run by `jax.lax.scan` (compile time independent of
depth), with the remat policy from the config. Each layer is pre-norm:
    x = x + Attn(RMSNorm(x));  x = x + W_down(silu(W_gate h) * W_up h),  h = RMSNorm(x)
Attention is grouped-query (num_heads / num_kv_heads queries share one K/V head) with rotary positions, and a
mask that is causal within a segment: token t sees token s iff s <= t and segment(s) == segment(t).

KV cache: {"k", "v": [L, B, K, S, hd], "segment_ids": [B, S] int32 (0 = slot never written)}; heads before
slots, the layout the attention products read, so a decode step never transposes the cache. A call with a
cache writes each token's K/V at slot `positions[b, t]` (slot = absolute position) and attends to written slots
s <= positions[b, t] of the same segment, so prefill-then-decode equals one full forward.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from oresearcher import context_parallel, sharding
from oresearcher.model import cpu_kernels
from oresearcher.model.config import ModelConfig

Array = jax.Array

REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_and_mlp_out": jax.checkpoint_policies.save_only_these_names("attention_out", "mlp_out"),
}

# Stacked per-layer parameters: name -> (shape builder, logical axes, init). Shapes exclude the layer axis.
_NORM, _BIAS, _MATRIX = "ones", "zeros", "normal"


def _layer_params(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]:
    d, f, h, k, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    p = {
        "attn_norm": ((d,), ("norm",), _NORM),
        "wq": ((d, h, hd), ("embed", "q_heads", "head_dim"), _MATRIX),
        "wk": ((d, k, hd), ("embed", "kv_heads", "head_dim"), _MATRIX),
        "wv": ((d, k, hd), ("embed", "kv_heads", "head_dim"), _MATRIX),
        "wo": ((h, hd, d), ("q_heads", "head_dim", "embed"), _MATRIX),
        "mlp_norm": ((d,), ("norm",), _NORM),
        "w_gate": ((d, f), ("embed", "mlp"), _MATRIX),
        "w_up": ((d, f), ("embed", "mlp"), _MATRIX),
        "w_down": ((f, d), ("mlp", "embed"), _MATRIX),
    }
    if cfg.attention_bias:
        p["bq"] = ((h, hd), ("q_heads", "head_dim"), _BIAS)
        p["bk"] = ((k, hd), ("kv_heads", "head_dim"), _BIAS)
        p["bv"] = ((k, hd), ("kv_heads", "head_dim"), _BIAS)
    if cfg.attention_out_bias:
        p["bo"] = ((d,), ("norm",), _BIAS)
    if cfg.mlp_bias:
        p["b_gate"] = ((f,), ("mlp",), _BIAS)
        p["b_up"] = ((f,), ("mlp",), _BIAS)
        p["b_down"] = ((d,), ("norm",), _BIAS)
    if cfg.qk_norm:
        p["q_norm"] = ((hd,), ("head_dim",), _NORM)
        p["k_norm"] = ((hd,), ("head_dim",), _NORM)
    return p


def _init(kind: str, key, shape, dtype):
    if kind == _NORM:
        return jnp.ones(shape, dtype)
    if kind == _BIAS:
        return jnp.zeros(shape, dtype)
    return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class Layers(nnx.Module):
    """All decoder layers' parameters, stacked on a leading layer axis (logical axis "layers")."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.param_dtype)
        for name, (shape, axes, kind) in _layer_params(cfg).items():
            full = (cfg.num_layers, *shape)
            setattr(self, name, nnx.Param(_init(kind, rngs.params(), full, dtype), logical_axes=("layers", *axes)))

    def arrays(self) -> dict[str, Array]:
        return {name: getattr(self, name)[...] for name in vars(self) if isinstance(getattr(self, name), nnx.Param)}


# --------------------------------------------------------------------------------------------- building blocks
def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    """x [..., D] normalised in fp32 (as HF does), scaled by weight [D], returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [hd/2] (fp32), with Llama 3.1's band-wise rescaling when configured."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
    inv = inv.astype(np.float32)
    s = cfg.rope_scaling
    if s is None or s.get("rope_type", "default") == "default":
        return inv
    # llama3: long wavelengths (beyond the original context / low_freq_factor) slow down by `factor`, short ones
    # (below original / high_freq_factor) stay, and the band between interpolates smoothly.
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = np.float32(2 * np.pi) / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotate x [B, T, H, hd] by angle position * inv_freq, in HF's half-split layout (x1, x2 = halves)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def dense(x: Array, w: Array) -> Array:
    """x [..., din] @ w [din, *out] -> [..., *out], as one 2-D matmul: XLA's CPU backend runs multi-dimensional
    contractions (and their gradients) at about half the speed of the same product written as [N, din] @ [din, M]."""
    y = x.reshape(-1, x.shape[-1]) @ w.reshape(x.shape[-1], -1)
    return y.reshape(*x.shape[:-1], *w.shape[1:])


# The layouts of the sampler's per-layer weights on CPU: q/k/v fused into one matrix and gate/up into one, then
# either (a) packed in panels for cpu_kernels.matmul, an FFI kernel that streams them at close to memory speed,
# or (b) where it is not built, stored transposed ([dout, din], as torch stores a Linear) and cut into row blocks:
# XLA:CPU streams W [dout, din] @ x^T faster than x @ W for a few rows, and two independent blocks run on two cores
# at once. SmolLM2 at batch 8, the weight products of one token step: 44 ms as x @ W, 26-29 ms as two blocks,
# 18.5 ms in panels (experiments/bench/decode_floor.py).
FUSED = {"fused_qkv": ("wq", "wk", "wv"), "fused_o": ("wo",), "fused_gate_up": ("w_gate", "w_up"),
         "fused_down": ("w_down",)}
FEW_ROWS = 32   # up to this many rows, a block's product is W_i @ x^T; beyond, x @ W_i^T (a plain GEMM)


def decode_layout(p: dict[str, Array], layout: str = "blocks", blocks: int = 2) -> dict:
    """One layer's parameters (no layer axis) in a decode layout: FUSED's names map to the fused matrix, as a
    cpu_kernels-packed array (layout "panels", where its shape allows) or as a tuple of `blocks` arrays
    [dout_i, din] whose rows stacked are the fused matrix transposed; norms and biases as they are."""
    # as [din, dout]: wo [H, hd, D] reads its first two axes, every other matrix its first
    matrix = lambda n: p[n].reshape(-1, p[n].shape[-1]) if n == "wo" else p[n].reshape(p[n].shape[0], -1)
    out = {n: w for n, w in p.items() if not any(n in parts for parts in FUSED.values())}
    for name, parts in FUSED.items():
        w = jnp.concatenate([matrix(n) for n in parts], axis=1)
        if layout == "panels" and cpu_kernels.packable(w):
            out[name] = cpu_kernels.pack(w)
        else:
            out[name] = tuple(jnp.array_split(w.T, blocks, axis=0))
    return out


def dense_fused(x: Array, w) -> Array:
    """x [..., din] @ W -> [..., dout], W in a decode layout (decode_layout): row blocks of W^T, or packed."""
    if not isinstance(w, tuple):
        return cpu_kernels.matmul(x, w)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] <= FEW_ROWS:
        y = jnp.concatenate([b @ x2.T for b in w], axis=0).T
    else:
        y = jnp.concatenate([x2 @ b.T for b in w], axis=1)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def attention(q: Array, k: Array, v: Array, mask: Array, *, kv_heads_first: bool = False) -> Array:
    """Grouped-query attention. q [B, T, H, hd], k/v [B, S, K, hd] (or [B, K, S, hd] with kv_heads_first, the
    KV cache's layout), mask bool [B, T, S] -> [B, T, H, hd].

    The G = H / K query heads sharing a K/V head are stacked as rows ([B, K, G*T, hd]) so both products are
    plain batched matmuls over (B, K) with K/V read in [B, K, S, hd]. Scores and softmax are fp32. A row with no
    visible key (a never-written cache row) gets uniform weights instead of NaN; such rows are padding and their
    outputs are never used.
    """
    b, t, h, hd = q.shape
    if not kv_heads_first:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    kv = k.shape[1]
    g = h // kv
    q = (q * jnp.asarray(hd ** -0.5, q.dtype)).reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)
    q = q.reshape(b, kv, g * t, hd)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32).reshape(b, kv, g, t, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


# -------------------------------------------------------------------------------------------------- decoder
class Decoder(nnx.Module):
    """Decoder-only transformer. Parameters (logical axes in brackets):
    embed [vocab, embed]; layers.* stacked [layers, ...]; final_norm [norm]; lm_head [embed, vocab] if untied."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.param_dtype)
        self.embed = nnx.Param(_init(_MATRIX, rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype),
                               logical_axes=("vocab", "embed"))
        self.layers = Layers(cfg, rngs)
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype), logical_axes=("norm",))
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(_init(_MATRIX, rngs.params(), (cfg.hidden_size, cfg.vocab_size), dtype),
                                     logical_axes=("embed", "vocab"))
        self.mesh = None  # set by sharding.shard_model: activation constraints then use this mesh and rules
        self.rules = None

    def set_sharding(self, mesh, rules) -> None:
        self.mesh, self.rules = mesh, rules

    def _constrain(self, x: Array, axes) -> Array:
        return sharding.constrain(x, axes, self.mesh, self.rules)

    # ---------------------------------------------------------------------------------------------- forward
    def __call__(self, input_ids: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 cache: dict | None = None):
        """Logits float32 [B, T, V]; with a cache, (logits, updated cache)."""
        if cache is None:
            return self.unembed(self.hidden(input_ids, positions, segment_ids))
        hidden, cache = self._forward(input_ids, positions, segment_ids, cache)
        return self.unembed(hidden), cache

    def hidden(self, input_ids: Array, positions: Array | None = None, segment_ids: Array | None = None) -> Array:
        """Final-normed hidden states [B, T, D] in the compute dtype."""
        return self._forward(input_ids, positions, segment_ids, None)[0]

    def unembed(self, hidden: Array, head: Array | None = None) -> Array:
        """[B, T, D] -> float32 logits [B, T, V]. head: the sampler's copy of the unembedding instead of the
        model's own parameter, as [D, V] (a tied embedding transposed once) or packed for cpu_kernels.matmul."""
        return self._unembed(hidden, head)

    @jax.named_scope("unembed")
    def _unembed(self, hidden: Array, head: Array | None) -> Array:
        cdt = jnp.dtype(self.cfg.compute_dtype)
        h = hidden.reshape(-1, hidden.shape[-1])  # one 2-D matmul (see `dense`)
        if head is not None and head.ndim == 3:
            logits = cpu_kernels.matmul(h, head)
        elif head is not None:
            logits = jnp.einsum("nd,dv->nv", h, head.astype(cdt), preferred_element_type=jnp.float32)
        elif self.cfg.tie_embeddings:
            logits = jnp.einsum("nd,vd->nv", h, self.embed[...].astype(cdt), preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("nd,dv->nv", h, self.lm_head[...].astype(cdt), preferred_element_type=jnp.float32)
        logits = logits.reshape(*hidden.shape[:-1], -1)
        return self._constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict:
        """Empty KV cache for `batch_size` rows of up to `max_len` positions (compute dtype by default)."""
        cfg = self.cfg
        dtype = jnp.dtype(dtype or cfg.compute_dtype)
        shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        cache = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                 "segment_ids": jnp.zeros((batch_size, max_len), jnp.int32)}
        if self.mesh is not None:
            axes = {"k": ("layers", "cache_batch", "cache_kv_heads", "cache_length", "head_dim"),
                    "v": ("layers", "cache_batch", "cache_kv_heads", "cache_length", "head_dim"),
                    "segment_ids": ("cache_batch", "cache_length")}
            cache = {name: jax.device_put(a, sharding.logical_sharding(axes[name], self.mesh, self.rules, a.shape))
                     for name, a in cache.items()}
        return cache

    def _forward(self, input_ids, positions, segment_ids, cache):
        cfg = self.cfg
        cdt = jnp.dtype(cfg.compute_dtype)
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        positions = positions.astype(jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)

        with jax.named_scope("embed"):
            x = jnp.take(self.embed[...], input_ids, axis=0).astype(cdt)
            x = self._constrain(x, ("activation_batch", "activation_length", "activation_embed"))

        if cache is None and cfg.attention != "dense":
            mask, kv_segments = None, None  # blockwise attention builds its mask tile by tile from segment ids
        elif cache is None:
            # causal within a segment, by token order (positions only drive RoPE)
            idx = jnp.arange(t)
            mask = (idx[None, :, None] >= idx[None, None, :]) & (segment_ids[:, :, None] == segment_ids[:, None, :])
            kv_segments = None
        else:
            rows = jnp.arange(b)[:, None]
            kv_segments = cache["segment_ids"].at[rows, positions].set(segment_ids, mode="drop")
            slots = jnp.arange(kv_segments.shape[1])
            mask = (slots[None, None, :] <= positions[:, :, None]) & (
                kv_segments[:, None, :] == segment_ids[:, :, None])

        inv_freq = rope_frequencies(cfg)
        layer = self._layer_fn(positions, mask, inv_freq, segment_ids if cache is None else None)
        params = self.layers.arrays()
        if cache is None:
            body = lambda x, p: (layer(x, p, None)[0], None)
            xs = params
        else:
            body = lambda x, pc: layer(x, pc[0], pc[1])
            xs = (params, (cache["k"], cache["v"]))
        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT[cfg.remat], prevent_cse=False)
        with jax.named_scope("layers"):
            x, new_kv = jax.lax.scan(body, x, xs, unroll=1 if cfg.scan_layers else cfg.num_layers)

        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if cache is None:
            return x, None
        return x, {"k": new_kv[0], "v": new_kv[1], "segment_ids": kv_segments}

    def _layer_fn(self, positions, mask, inv_freq, segment_ids=None, window=None, cpu_attention=False,
                  kv_io=None):
        """One pre-norm layer: (x [B,T,D], per-layer params, optional (k_cache, v_cache)) -> (x, new K/V).
        With `mask` None, attention is cfg.attention (blockwise, from `segment_ids`) instead of dense. With a
        cache and a `window`, attention reads only the cache's first `window` slots (mask is [B, T, window]);
        cpu_attention: over the cache with cpu_kernels.attention (the same maths, read in place). kv_io: a cache
        of another layout (a paged one): kv_io(k, v, kv_cache) -> (keys, values [B, K, S, hd] to attend to, the
        updated cache), mask [B, T, S]."""
        cfg = self.cfg
        cdt = jnp.dtype(cfg.compute_dtype)
        eps = cfg.rms_norm_eps
        act = ("activation_batch", "activation_length", "activation_embed")
        heads = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
        kv_heads = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")

        def layer(x, p, kv_cache):
            p = jax.tree.map(lambda w: w.astype(cdt), p)
            with jax.named_scope("attention"):     # names in profiles (TensorBoard's trace viewer)
                h = rms_norm(x, p["attn_norm"], eps)
                if "fused_qkv" in p:      # the sampler's decode layout (decode_layout)
                    nq, nk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
                    q, k, v = jnp.split(dense_fused(h, p["fused_qkv"]), [nq, nq + nk], axis=-1)
                    q = q.reshape(*h.shape[:-1], cfg.num_heads, cfg.head_dim)
                    k = k.reshape(*h.shape[:-1], cfg.num_kv_heads, cfg.head_dim)
                    v = v.reshape(*h.shape[:-1], cfg.num_kv_heads, cfg.head_dim)
                else:
                    q, k, v = dense(h, p["wq"]), dense(h, p["wk"]), dense(h, p["wv"])
                if cfg.attention_bias:
                    q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
                if cfg.qk_norm:
                    q, k = rms_norm(q, p["q_norm"], eps), rms_norm(k, p["k_norm"], eps)
                q = self._constrain(apply_rope(q, positions, inv_freq), heads)
                k = self._constrain(apply_rope(k, positions, inv_freq), kv_heads)
                v = self._constrain(v, kv_heads)
                if kv_cache is not None and kv_io is not None:
                    k, v, new_kv = kv_io(k.astype(kv_cache[0].dtype), v.astype(kv_cache[1].dtype), kv_cache)
                    k, v = k.astype(cdt), v.astype(cdt)
                elif kv_cache is not None:
                    # cache [B, K, S, hd]: indexing [rows, :, positions] addresses [B, T, K, hd], k's own layout
                    rows = jnp.arange(x.shape[0])[:, None]
                    k_all = kv_cache[0].at[rows, :, positions].set(k.astype(kv_cache[0].dtype), mode="drop")
                    v_all = kv_cache[1].at[rows, :, positions].set(v.astype(kv_cache[1].dtype), mode="drop")
                    new_kv = (k_all, v_all)
                    if not cpu_attention:       # the kernel reads the window of the cache in place
                        k, v = k_all[:, :, :window].astype(cdt), v_all[:, :, :window].astype(cdt)
                else:
                    new_kv = None
                if cpu_attention and kv_cache is not None:
                    o = cpu_kernels.attention(q, *new_kv, mask)
                elif mask is None:
                    o = context_parallel.attention(q, k, v, segment_ids, implementation=cfg.attention, mesh=self.mesh,
                                                   rules=self.rules, block=cfg.attention_block)
                else:
                    o = attention(q, k, v, mask, kv_heads_first=kv_cache is not None)
                o = o.reshape(*o.shape[:2], -1)
                o = dense_fused(o, p["fused_o"]) if "fused_o" in p else dense(o, p["wo"].reshape(-1, x.shape[-1]))
                if cfg.attention_out_bias:
                    o = o + p["bo"]
                o = checkpoint_name(o, "attention_out")
                x = self._constrain(x + o, act)

            with jax.named_scope("mlp"):
                h = rms_norm(x, p["mlp_norm"], eps)
                if "fused_gate_up" in p:
                    gate, up = jnp.split(dense_fused(h, p["fused_gate_up"]), 2, axis=-1)
                else:
                    gate, up = dense(h, p["w_gate"]), dense(h, p["w_up"])
                if cfg.mlp_bias:
                    gate, up = gate + p["b_gate"], up + p["b_up"]
                m = self._constrain(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
                m = dense_fused(m, p["fused_down"]) if "fused_down" in p else dense(m, p["w_down"])
                if cfg.mlp_bias:
                    m = m + p["b_down"]
                m = checkpoint_name(m, "mlp_out")
            return self._constrain(x + m, act), new_kv

        return layer

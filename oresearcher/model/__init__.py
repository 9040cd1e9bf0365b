"""The policy model: one Flax NNX decoder (Llama, Qwen2/2.5, Qwen3), its configs, and checkpoint I/O.

    from oresearcher.model import ModelConfig, Decoder, PRESETS, load_hf, save_hf, load_gguf, Tokenizer
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    logits = model(input_ids)                                  # int32 [B, T] -> float32 [B, T, vocab]
    model = load_hf("hf_dir", mesh=mesh)                       # safetensors + config.json, straight to shards
    save_hf(model, "out_dir")                                  # transformers.AutoModelForCausalLM loads it
    model, tokenizer = load_gguf()                             # embedded SmolLM2-135M-Instruct (no torch)

Checkpoint I/O and the tokenizer are imported on first use, so `import oresearcher.model` stays light.

Conventions beyond Interface 3 (additions, nothing removed):
- KV cache = {"k", "v": [L, B, K, S, hd], "segment_ids": [B, S] int32}; slot = absolute position, segment id 0
  marks a never-written slot, so calls with a cache use segment ids >= 1 (the default is 1).
- ModelConfig.attention ("dense" default; "flash", "allgather", "ring", "cudnn", "splash" from
  oresearcher/context_parallel.py) applies without a cache; the cache path is always dense.
- load_hf(..., **overrides) replaces ModelConfig fields (e.g. remat="full"); load_gguf(path=None, mesh=None,
  rules=None, param_dtype=, compute_dtype=); save_hf(model, dir, max_shard_bytes=None, dtype=None,
  tokenizer=None).
- After sharding.shard_model (or load_hf/load_gguf with a mesh) the model holds `mesh` and `rules`, and its
  activation constraints use them; otherwise they use the mesh set by `jax.set_mesh`, if any.
"""
from oresearcher.model.config import PRESETS, ModelConfig, from_hf_config, overrides_from, to_hf_config
from oresearcher.model.decoder import Decoder

__all__ = ["ModelConfig", "PRESETS", "Decoder", "from_hf_config", "overrides_from", "to_hf_config", "load_hf",
           "save_hf", "load_gguf", "Tokenizer"]

_LAZY = {"load_hf": "oresearcher.model.hf_io", "save_hf": "oresearcher.model.hf_io",
         "load_gguf": "oresearcher.model.gguf_io", "Tokenizer": "oresearcher.model.tokenizer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oresearcher.model' has no attribute {name!r}")

"""ModelConfig: the few numbers that pick one member of the decoder family (Llama, Qwen2/2.5, Qwen3).

    cfg = PRESETS["smollm2-135m"]                       # or from_hf_config(json.load(open("config.json")))
    cfg = dataclasses.replace(cfg, compute_dtype="bfloat16", remat="full")

The config is frozen and hashable (it is static in every jitted function), so `rope_scaling` is stored as a
FrozenDict. Dtypes are strings ("float32", "bfloat16") so the config round-trips through JSON.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

FAMILIES = ("llama", "qwen2", "qwen3")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_attention_and_mlp_out")
DTYPES = ("float32", "bfloat16", "float16")
# RoPE variants we implement; HF's "default" is plain RoPE, "llama3" is Llama 3.1's frequency-band rescaling.
ROPE_TYPES = ("default", "llama3")
# "dense" is the decoder's own masked attention; the others live in oresearcher/context_parallel.py (long context)
ATTENTION = ("dense", "flash", "allgather", "ring", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str  # "llama" | "qwen2" | "qwen3": selects q/k/v bias (qwen2) and q/k RMSNorm (qwen3)
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F, the SwiGLU width
    num_layers: int  # L
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA: num_heads % num_kv_heads == 0)
    head_dim: int
    rope_theta: float = 10_000.0
    rope_scaling: Mapping[str, Any] | None = None  # {"rope_type": "llama3", "factor": 8.0, ...} or None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False  # unembedding = embedding^T
    attention_bias: bool = False  # bias on the q, k, v projections (Qwen2; Llama and Qwen3 attention_bias=true)
    attention_out_bias: bool = False  # bias on the output projection too (Llama and Qwen3 attention_bias=true)
    mlp_bias: bool = False  # bias on gate, up and down projections (Llama mlp_bias=true)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    max_position_embeddings: int = 8192
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"  # one of REMAT_POLICIES: what the backward pass keeps from each layer
    scan_layers: bool = True  # False unrolls the layer scan (XLA sees every layer; slower compile)
    attention: str = "dense"  # one of ATTENTION; used without a KV cache (the cache path is always dense)
    attention_block: int = 512  # K/V tile length of the blockwise implementations
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r}: expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig: num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION:
            raise ValueError(f"ModelConfig.attention={self.attention!r}: expected one of {ATTENTION}")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: expected one of {DTYPES}")
        if self.rope_scaling is not None:
            scaling = FrozenDict(self.rope_scaling)
            if scaling.get("rope_type", "default") not in ROPE_TYPES:
                raise ValueError(f"ModelConfig.rope_scaling.rope_type={scaling.get('rope_type')!r}: "
                                 f"supported RoPE types are {ROPE_TYPES}")
            object.__setattr__(self, "rope_scaling", scaling)

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        d, f, h, k, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * hd * (2 * h + 2 * k) + (hd * (h + 2 * k) if self.attention_bias else 0)
        attn += d if self.attention_out_bias else 0
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d + (2 * hd if self.qk_norm else 0)
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + d

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling is not None else None
        return out


# ----------------------------------------------------------------------------------------------- presets
# Shapes are the published config.json values; load_hf reads the real file, so presets matter for
# from-scratch runs, AOT-compile fit checks and benchmarks. Big presets compute in bf16 (params bf16 too:
# the 32B/72B models only fit that way); tiny and the embedded 135M default stay fp32 for CPU.
PRESETS: dict[str, ModelConfig] = {
    # Test model: every dimension divides a 2x2x2 mesh, so every parameter kind really gets sharded.
    "tiny": ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10_000.0, tie_embeddings=True,
                        max_position_embeddings=2048),
    "smollm2-135m": ModelConfig(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100_000.0,
                                rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192,
                                bos_token_id=1, eos_token_id=2),
    "qwen2.5-0.5b": ModelConfig(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1e6,
                                rms_norm_eps=1e-6, tie_embeddings=True, attention_bias=True,
                                max_position_embeddings=32768, compute_dtype="bfloat16"),
    "qwen2.5-7b": ModelConfig(family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1e6,
                              rms_norm_eps=1e-6, attention_bias=True, max_position_embeddings=32768,
                              param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"),
    "qwen2.5-32b": ModelConfig(family="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                               num_layers=64, num_heads=40, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                               rms_norm_eps=1e-5, attention_bias=True, max_position_embeddings=32768,
                               param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"),
    "qwen2.5-72b": ModelConfig(family="qwen2", vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                               num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                               rms_norm_eps=1e-5, attention_bias=True, max_position_embeddings=32768,
                               param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"),
    # Llama 3.1 8B: the 128k-context release, with llama3 RoPE scaling.
    "llama3-8b": ModelConfig(family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                             rms_norm_eps=1e-5, max_position_embeddings=131072,
                             param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"),
}


# ------------------------------------------------------------------------------------------ HF config.json
_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _rope_from_hf(hf: Mapping[str, Any], where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either layout: old `rope_theta` + `rope_scaling`, or newer
    `rope_parameters` = {"rope_type": ..., "rope_theta": ..., <scaling keys>}."""
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        if "rope_theta" in hf:
            params.setdefault("rope_theta", hf["rope_theta"])
        field = "rope_scaling"
    else:
        params = dict(params)
        field = "rope_parameters"
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    theta = params.pop("rope_theta", hf.get("rope_theta", 10_000.0))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: {field}.rope_type={rope_type!r} is not supported (supported: {ROPE_TYPES})")
    if rope_type == "default":
        return float(theta), None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"{where}: {field} for rope_type='llama3' lacks {missing}")
    return float(theta), {"rope_type": "llama3", **{k: params[k] for k in keys}}


def from_hf_config(hf: Mapping[str, Any], *, param_dtype: str = "float32", compute_dtype: str = "float32",
                   where: str = "config.json", **overrides) -> ModelConfig:
    """ModelConfig from a transformers config.json dict. `where` names the file in error messages."""
    model_type = hf.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        raise ValueError(f"{where}: model_type={model_type!r} is not supported; supported model types: "
                         f"{sorted(_HF_MODEL_TYPES)}")
    family = _HF_MODEL_TYPES[model_type]
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act={act!r} is not supported (the decoder uses SwiGLU with silu)")
    if hf.get("mlp_bias") and family != "llama":
        raise ValueError(f"{where}: mlp_bias=true is a Llama option; {model_type} has no MLP biases")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError(f"{where}: use_sliding_window=true is not supported")
    heads = hf["num_attention_heads"]
    theta, scaling = _rope_from_hf(hf, where)
    fields = dict(
        family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
        # Qwen2 biases q/k/v only; Llama's and Qwen3's attention_bias covers o_proj as well
        attention_out_bias=family != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3", max_position_embeddings=hf.get("max_position_embeddings", 8192),
        param_dtype=param_dtype, compute_dtype=compute_dtype,
        bos_token_id=_first_id(hf.get("bos_token_id")), eos_token_id=_first_id(hf.get("eos_token_id")),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def overrides_from(values: Mapping[str, Any] | None) -> dict:
    """ModelConfig fields to replace, from a config's `model_overrides` (configs.common.model_overrides: every
    field, None where the preset's own value stays)."""
    out = {}
    for key, value in dict(values or {}).items():
        if value is None:
            continue
        if key not in ModelConfig.__dataclass_fields__:
            raise ValueError(f"model_overrides.{key}: ModelConfig has no field {key!r}; fields: "
                             f"{sorted(ModelConfig.__dataclass_fields__)}")
        out[key] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def _first_id(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def to_hf_config(cfg: ModelConfig) -> dict:
    """The config.json that transformers reads back (AutoConfig / AutoModelForCausalLM)."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[cfg.family]
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {**dict(cfg.rope_scaling), "rope_theta": cfg.rope_theta}
    out = {
        "architectures": [arch], "model_type": cfg.family, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "rope_parameters": rope,
        # the older layout as well, so older transformers releases read the same RoPE
        "rope_theta": cfg.rope_theta, "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
    }
    if cfg.family == "llama":
        out.update(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family == "qwen3":
        out["attention_bias"] = cfg.attention_bias
    if cfg.bos_token_id is not None:
        out["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        out["eos_token_id"] = cfg.eos_token_id
    return out

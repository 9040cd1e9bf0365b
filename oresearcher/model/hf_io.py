"""HF checkpoints in and out: safetensors (one file or a sharded index) + config.json.

    model = load_hf("hf_dir", mesh=mesh, rules=None, param_dtype="float32", compute_dtype="float32")
    save_hf(model, "out_dir")       # transformers.AutoModelForCausalLM.from_pretrained("out_dir") loads it

Loading never holds the whole model on host: the model is built abstractly (shapes only), and each parameter
is created with `jax.make_array_from_callback` straight in its target sharding; the callback slices the
memory-mapped file for exactly the shard a device holds (layer-stacked parameters are assembled layer by
layer, shard by shard). Saving streams one tensor at a time to disk.

Layout map (ours <- HF, per layer i; HF Linear weights are [out, in]):
    embed [V, D]            <- model.embed_tokens.weight
    layers.wq [L, D, H, hd] <- model.layers.i.self_attn.q_proj.weight^T   (k_proj, v_proj alike)
    layers.wo [L, H, hd, D] <- model.layers.i.self_attn.o_proj.weight^T
    layers.bq [L, H, hd]    <- ...q_proj.bias                 (qwen2; llama, qwen3 with attention_bias)
    layers.bo [L, D]        <- ...o_proj.bias                 (llama, qwen3 with attention_bias)
    layers.b_gate/b_up [L, F], b_down [L, D] <- mlp.{gate,up,down}_proj.bias   (llama with mlp_bias)
    layers.q_norm [L, hd]   <- ...self_attn.q_norm.weight                    (qwen3)
    layers.w_gate/w_up [L, D, F], w_down [L, F, D] <- mlp.{gate,up,down}_proj.weight^T
    attn_norm / mlp_norm    <- input_layernorm / post_attention_layernorm;  final_norm <- model.norm.weight
    lm_head [D, V]          <- lm_head.weight^T                             (untied only)
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from flax import nnx

from oresearcher import sharding
from oresearcher.model.config import ModelConfig, from_hf_config, to_hf_config
from oresearcher.model.decoder import Decoder
from oresearcher.model.safetensors_file import SafetensorsFile, write_safetensors


# ---------------------------------------------------------------------------------------------- name mapping
def _hf_layer_name(ours: str) -> str:
    return {
        "attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
        "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
        "wo": "self_attn.o_proj.weight", "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias",
        "bv": "self_attn.v_proj.bias", "bo": "self_attn.o_proj.bias", "b_gate": "mlp.gate_proj.bias",
        "b_up": "mlp.up_proj.bias", "b_down": "mlp.down_proj.bias", "q_norm": "self_attn.q_norm.weight",
        "k_norm": "self_attn.k_norm.weight",
        "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight",
    }[ours]


def hf_to_ours(ours: str, cfg: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    """Converter of one HF tensor (one layer's, for stacked params) to our layout without the layer axis."""
    d, h, k, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return {
        "wq": lambda w: w.T.reshape(d, h, hd), "wk": lambda w: w.T.reshape(d, k, hd),
        "wv": lambda w: w.T.reshape(d, k, hd), "wo": lambda w: w.T.reshape(h, hd, d),
        "bq": lambda b: b.reshape(h, hd), "bk": lambda b: b.reshape(k, hd), "bv": lambda b: b.reshape(k, hd),
        "w_gate": lambda w: w.T, "w_up": lambda w: w.T, "w_down": lambda w: w.T, "lm_head": lambda w: w.T,
    }.get(ours, lambda w: w)


def ours_to_hf(ours: str, cfg: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    d = cfg.hidden_size
    return {
        "wq": lambda w: w.reshape(d, -1).T, "wk": lambda w: w.reshape(d, -1).T, "wv": lambda w: w.reshape(d, -1).T,
        "wo": lambda w: w.reshape(-1, d).T, "bq": lambda b: b.reshape(-1), "bk": lambda b: b.reshape(-1),
        "bv": lambda b: b.reshape(-1), "w_gate": lambda w: w.T, "w_up": lambda w: w.T, "w_down": lambda w: w.T,
        "lm_head": lambda w: w.T,
    }.get(ours, lambda w: w)


def param_plan(cfg: ModelConfig, state) -> list[tuple[tuple[str, ...], str | None, list[str]]]:
    """[(variable path, our short name, HF tensor names (one per layer for stacked params))]."""
    plan = []
    for path, _ in nnx.to_flat_state(state):
        path = tuple(str(p) for p in path)
        if path == ("embed",):
            plan.append((path, "embed", ["model.embed_tokens.weight"]))
        elif path == ("final_norm",):
            plan.append((path, "final_norm", ["model.norm.weight"]))
        elif path == ("lm_head",):
            plan.append((path, "lm_head", ["lm_head.weight"]))
        elif path[0] == "layers":
            name = path[1]
            plan.append((path, name, [f"model.layers.{i}.{_hf_layer_name(name)}" for i in range(cfg.num_layers)]))
        else:
            raise ValueError(f"no HF name for parameter {'.'.join(path)}")
    return plan


# ----------------------------------------------------------------------------------------------------- load
class _Checkpoint:
    """All tensors of a checkpoint directory, by name, across its safetensors files (memory-mapped)."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).exists():
                    raise FileNotFoundError(f"{index}: lists {f} but {path / f} does not exist; download it")
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json found; "
                                        "point load_hf at a directory saved by transformers (safetensors format)")
        self.files = {f: SafetensorsFile(path / f) for f in files}
        self.where = {name: f for f, st in self.files.items() for name in st.keys()}
        self.path = path

    def __contains__(self, name):
        return name in self.where

    def __getitem__(self, name) -> np.ndarray:
        return self.files[self.where[name]][name]

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.where:
            raise KeyError(f"{self.path}: tensor {name!r} is missing from the checkpoint "
                           f"(files: {sorted(self.files)}); the checkpoint is incomplete or not a "
                           "Llama/Qwen2/Qwen3 causal LM")
        got = tuple(self.files[self.where[name]].entries[name]["shape"])
        if got != shape:
            raise ValueError(f"{self.path / self.where[name]}: tensor {name!r} has shape {got}, config.json "
                             f"implies {shape}")


def _leaf_array(ckpt: _Checkpoint, cfg: ModelConfig, short: str, names: list[str], var, mesh, rules):
    """One parameter, placed directly in its sharding; host memory is at most one shard (+ one HF tensor)."""
    convert = hf_to_ours(short, cfg)
    stacked = names[0].startswith("model.layers.")
    dtype = np.dtype(var.dtype)
    shape = tuple(var.shape)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if stacked:
            layers = range(cfg.num_layers)[index[0]]
            return np.stack([np.asarray(convert(ckpt[names[i]])[index[1:]], dtype=dtype) for i in layers])
        return np.asarray(convert(ckpt[names[0]])[index], dtype=dtype)

    if mesh is None:
        return jax.device_put(read(tuple(slice(None) for _ in shape)))
    axes = var.get_metadata().get("logical_axes")
    target = sharding.logical_sharding(axes, mesh, rules, shape)
    done: dict = {}  # replicas ask for the same slice: read it once

    def callback(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in done:
            done[key] = read(index)
        return done[key]

    return jax.make_array_from_callback(shape, target, callback)


def load_hf(path: str | Path, mesh=None, rules=None, param_dtype: str = "float32", compute_dtype: str = "float32",
            **overrides) -> Decoder:
    """Decoder from an HF directory (config.json + safetensors). `overrides` replace ModelConfig fields
    (e.g. remat="full"). With a mesh, parameters land sharded by `rules` (default sharding.RULES)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found; load_hf needs an HF model directory "
                                "(config.json + *.safetensors)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    cfg = from_hf_config(hf_config, param_dtype=param_dtype, compute_dtype=compute_dtype, where=str(config_file),
                         **overrides)
    ckpt = _Checkpoint(path)
    if cfg.tie_embeddings and "lm_head.weight" in ckpt and "model.embed_tokens.weight" not in ckpt:
        raise ValueError(f"{path}: tied embeddings but only lm_head.weight is stored")
    rules = sharding.RULES if rules is None else tuple(tuple(r) for r in rules)
    return build_from_tensors(cfg, ckpt, mesh, rules)


def build_from_tensors(cfg: ModelConfig, tensors, mesh=None, rules=None) -> Decoder:
    """Decoder whose parameters come from `tensors` (name -> numpy array in HF layout, e.g. a checkpoint);
    all names and shapes are checked before any is read."""
    rules = sharding.RULES if rules is None else rules
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    plan = param_plan(cfg, state)
    flat = dict(nnx.to_flat_state(state))
    for path, short, names in plan:
        var = flat[tuple(path)]
        want = _hf_shape(short, tuple(var.shape), cfg)
        for name in names:
            tensors.check(name, want)
    leaves = []
    for path, short, names in plan:
        var = flat[tuple(path)]
        leaves.append((path, var.replace(value=_leaf_array(tensors, cfg, short, names, var, mesh, rules))))
    model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
    if mesh is not None:
        model.set_sharding(mesh, rules)
    return model


def _hf_shape(short: str, ours: tuple[int, ...], cfg: ModelConfig) -> tuple[int, ...]:
    """The HF shape of one (per-layer) tensor whose stacked/our shape is `ours`."""
    per = ours[1:] if short not in ("embed", "final_norm", "lm_head") else ours
    return ours_to_hf(short, cfg)(np.empty(per, np.int8)).shape


# ----------------------------------------------------------------------------------------------------- save
def _to_host(x: jax.Array) -> np.ndarray:
    """One parameter (or layer slice) on host; on a multi-host mesh, gathered from every process first."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_hf(model: Decoder, out_dir: str | Path, max_shard_bytes: int | None = None, dtype: str | None = None,
            tokenizer=None) -> Path:
    """Write config.json + safetensors (sharded with an index when larger than `max_shard_bytes`), one tensor
    on host at a time. `dtype` (e.g. "bfloat16") converts on the way out; default: the param dtype.
    With a `tokenizer` (oresearcher.model.Tokenizer), its files are written alongside."""
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    tensors, producers = [], {}
    for path, short, names in param_plan(cfg, state):
        var = flat[tuple(path)]
        convert = ours_to_hf(short, cfg)
        for i, name in enumerate(names):
            stacked = path[0] == "layers"
            producers[name] = (lambda v=var, i=i, stacked=stacked, convert=convert:
                               convert(_to_host(v[...][i] if stacked else v[...])))
            tensors.append((name, _hf_shape(short, tuple(var.shape), cfg), out_dtype))

    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[1])) * out_dtype.itemsize
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    produce = lambda name: producers[name]()
    if jax.process_index() != 0:  # multi-host: every process joins each gather, process 0 writes
        for name, _, _ in tensors:
            produce(name)
        return out
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0], produce)
    else:
        weight_map = {}
        for n, shard in enumerate(shards):
            fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, shard, produce)
            weight_map.update({t[0]: fname for t in shard})
        total = sum(int(np.prod(t[1])) * out_dtype.itemsize for t in tensors)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf = to_hf_config(cfg)
    hf["torch_dtype"] = hf["dtype"] = str(out_dtype) if out_dtype != np.dtype(ml_dtypes.bfloat16) else "bfloat16"
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer is not None:
        tokenizer.save(out)
    return out

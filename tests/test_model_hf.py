"""Logit parity with HF transformers (PyTorch, fp32) for tiny random models of every supported variant, on one
device and on a 2x2x2 fake-device mesh; export round trip; sharded checkpoints; clear errors."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oresearcher import sharding
from oresearcher.model import load_hf, save_hf

TOL = 1e-4
# variant -> (model_type, config kwargs); together they cover: llama default/llama3 RoPE, qwen2 bias,
# qwen3 q/k norm, tied and untied embeddings, llama's optional biases (q/k/v/o and the MLP's), qwen3's (q/k/v/o).
VARIANTS = {
    "llama_untied": ("llama", dict(tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 5000.0})),
    "llama3_scaling_tied": ("llama", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2_bias_untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen3_qknorm_tied": ("qwen3", dict(tie_word_embeddings=True, head_dim=16)),
    "llama_mlp_attention_bias": ("llama", dict(tie_word_embeddings=True, mlp_bias=True, attention_bias=True)),
    "qwen3_attention_bias": ("qwen3", dict(tie_word_embeddings=False, head_dim=16, attention_bias=True)),
}


def make_hf_model(variant: str, out_dir, seed: int = 0, max_shard_size=None):
    """A tiny random HF model saved to out_dir; every parameter (norms and biases too) randomised so that a
    wrong mapping of any tensor shows in the logits. Returns the torch model (eval mode, fp32)."""
    import torch
    import transformers

    model_type, extra = VARIANTS[variant]
    cfg = transformers.AutoConfig.for_model(
        model_type, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()


def random_ids(b=2, t=40, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (b, t), dtype=np.int32)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_one_device(variant, tmp_path):
    hf = make_hf_model(variant, tmp_path)
    model = load_hf(tmp_path)
    assert model.cfg.num_params == sum(p.numel() for p in hf.parameters())   # every tensor is read, once
    ids = random_ids()
    ours = np.asarray(model(jnp.asarray(ids)))
    diff = np.abs(ours - hf_logits(hf, ids)).max()
    print(f"{variant}: max |dlogit| = {diff:.2e} (1 device)")
    assert diff <= TOL


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_on_2x2x2_mesh(variant, tmp_path):
    hf = make_hf_model(variant, tmp_path)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = load_hf(tmp_path, mesh=mesh)
    # the parameters really are split across devices, per the rules table
    for leaf in (model.embed, model.layers.wq, model.layers.w_gate, model.layers.w_down):
        arr = leaf[...]
        assert not arr.sharding.is_fully_replicated, arr.sharding
        assert arr.addressable_shards[0].data.size < arr.size
    assert model.layers.wq[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    ids = random_ids(b=4)
    ours = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids))
    assert not ours.sharding.is_fully_replicated  # activations constrained too (batch over data, vocab over tensor)
    diff = np.abs(np.asarray(ours) - hf_logits(hf, ids)).max()
    print(f"{variant}: max |dlogit| = {diff:.2e} (2x2x2 mesh)")
    assert diff <= TOL


def test_old_rope_theta_layout_reads_the_same(tmp_path):
    """config.json with top-level rope_theta + rope_scaling (pre-rope_parameters layout) gives the same model."""
    hf = make_hf_model("llama3_scaling_tied", tmp_path)
    config_file = tmp_path / "config.json"
    c = json.loads(config_file.read_text())
    rope = c.pop("rope_parameters")
    c["rope_theta"] = rope.pop("rope_theta")
    c["rope_scaling"] = rope
    config_file.write_text(json.dumps(c))
    model = load_hf(tmp_path)
    assert model.cfg.rope_scaling["rope_type"] == "llama3" and model.cfg.rope_theta == 10000.0
    ids = random_ids()
    assert np.abs(np.asarray(model(jnp.asarray(ids))) - hf_logits(hf, ids)).max() <= TOL


@pytest.mark.parametrize("variant", ["qwen2_bias_untied", "llama3_scaling_tied", "llama_mlp_attention_bias"])
def test_export_round_trip_loads_in_transformers(variant, tmp_path):
    import transformers

    make_hf_model(variant, tmp_path / "src")
    model = load_hf(tmp_path / "src")
    save_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = random_ids()
    diff = np.abs(np.asarray(model(jnp.asarray(ids))) - hf_logits(back, ids)).max()
    print(f"{variant}: export round trip max |dlogit| = {diff:.2e}")
    assert diff <= TOL


def test_sharded_two_file_checkpoint_loads(tmp_path):
    hf = make_hf_model("qwen2_bias_untied", tmp_path, max_shard_size="300KB")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) >= 2 and (tmp_path / "model.safetensors.index.json").exists(), files
    # fsdp 2: the 2 rows of random_ids() split over it (a mesh axis must divide what it splits)
    model = load_hf(tmp_path, mesh=sharding.make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4]))
    ids = random_ids()
    assert np.abs(np.asarray(model(jnp.asarray(ids))) - hf_logits(hf, ids)).max() <= TOL


def test_save_hf_sharded_index_round_trip(tmp_path):
    make_hf_model("llama_untied", tmp_path / "src")
    model = load_hf(tmp_path / "src")
    save_hf(model, tmp_path / "out", max_shard_bytes=200_000)
    assert len(list((tmp_path / "out").glob("*.safetensors"))) >= 2
    again = load_hf(tmp_path / "out")
    ids = random_ids()
    assert np.array_equal(np.asarray(model(jnp.asarray(ids))), np.asarray(again(jnp.asarray(ids))))


# ------------------------------------------------------------------------------------------------- errors
def test_truncated_safetensors_names_the_file(tmp_path):
    make_hf_model("llama_untied", tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        load_hf(tmp_path)


def test_missing_tensor_names_the_tensor(tmp_path):
    from oresearcher.model.safetensors_file import SafetensorsFile, write_safetensors

    make_hf_model("llama_untied", tmp_path / "src")
    src = SafetensorsFile(tmp_path / "src" / "model.safetensors")
    keep = [(n, tuple(src[n].shape), src[n].dtype) for n in src.keys() if n != "model.layers.1.mlp.up_proj.weight"]
    (tmp_path / "bad").mkdir()
    write_safetensors(tmp_path / "bad" / "model.safetensors", keep, lambda n: src[n])
    shutil.copy(tmp_path / "src" / "config.json", tmp_path / "bad" / "config.json")
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        load_hf(tmp_path / "bad")


def test_unsupported_model_type_names_the_field(tmp_path):
    make_hf_model("llama_untied", tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    c["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"config\.json: model_type='gpt_neox' is not supported"):
        load_hf(tmp_path)


def test_unsupported_rope_type_names_the_field():
    from oresearcher.model import from_hf_config
    hf = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}
    with pytest.raises(ValueError, match=r"rope_parameters\.rope_type='yarn'"):
        from_hf_config(hf)

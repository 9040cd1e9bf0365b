"""`python -m oresearcher.export` turns any saved SFT or RL step into an HF directory that transformers loads."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from oresearcher import checkpoint, export

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _hf_weights(directory):
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft")
    p = _run("oresearcher.train", "--config=configs/sft.py:tiny", f"--config.workdir={workdir}",
             "--config.progress=False", "--config.total_steps=2", "--config.checkpoint_every=1")
    assert p.returncode == 0, p.stderr[-3000:]
    return workdir


def test_each_sft_step_exports_to_a_loadable_hf_directory(sft_workdir, tmp_path):
    for step in (1, 2):
        p = _run("oresearcher.export", f"--workdir={sft_workdir}", f"--step={step}", f"--out={tmp_path / f'D{step}'}")
        assert p.returncode == 0, p.stderr[-3000:]
        assert f"step {step}" in p.stdout
    d1, d2 = _hf_weights(tmp_path / "D1"), _hf_weights(tmp_path / "D2")
    assert d1.keys() == d2.keys() and "model.embed_tokens.weight" in d1
    assert not np.allclose(d1["model.embed_tokens.weight"], d2["model.embed_tokens.weight"])
    # the exported weights are the checkpoint's own (read back without a target, as saved)
    ckpt = checkpoint.Checkpointer(sft_workdir / "checkpoints")
    saved, _ = ckpt.restore(2)
    ckpt.close()
    np.testing.assert_array_equal(d2["model.embed_tokens.weight"], np.asarray(saved["params"]["embed"]))
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "D2")
    assert tokenizer("hello world")["input_ids"]

    # a run whose model is an HF directory (here D2, the same shapes) rebuilds it from that directory's config
    hf_run = tmp_path / "hf_run"
    hf_run.mkdir()
    config = json.loads((sft_workdir / "config.json").read_text())
    (hf_run / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "D2"), "tokenizer": ""}))
    (hf_run / "checkpoints").symlink_to(sft_workdir / "checkpoints")
    export.export(hf_run, tmp_path / "D3", step=1)
    np.testing.assert_array_equal(_hf_weights(tmp_path / "D3")["model.embed_tokens.weight"],
                                  d1["model.embed_tokens.weight"])


def test_newest_step_by_default_and_clear_errors(sft_workdir, tmp_path):
    model, _, step = export.restore_policy(sft_workdir)
    assert step == 2 and model.cfg.vocab_size == 512
    with pytest.raises(export.ExportError, match=r"no checkpoint of step 7 .*kept steps are \[1, 2\]"):
        export.export(sft_workdir, tmp_path / "out", step=7)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((sft_workdir / "config.json").read_text())
    with pytest.raises(export.ExportError, match="no checkpoints in"):
        export.export(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(export.ExportError, match="config.json not found"):
        export.export(tmp_path, tmp_path / "out")
    p = _run("oresearcher.export", f"--workdir={sft_workdir}", "--step=9", f"--out={tmp_path / 'out'}")
    assert p.returncode == 1 and "kept steps are [1, 2]" in p.stderr


def test_an_rl_checkpoint_exports_its_policy(tmp_path):
    """An RL train state ({"params", "optimizer"} of an nnx.Optimizer) exports through the same code."""
    sys.path.insert(0, str(REPO))
    from configs import rl as rl_configs
    from oresearcher import sft, sharding
    from oresearcher.rl import train as rl_train

    config = rl_configs.get_config("tiny")
    config.workdir = str(tmp_path)
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    mesh = sharding.make_mesh({"fsdp": -1})
    model, _ = sft.build_model(config, mesh, None)
    optimizer = rl_train.make_optimizer(model, config)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(3, rl_train._train_state(model, optimizer), {"step": 3}, wait=True)
    ckpt.close()
    export.export(tmp_path, tmp_path / "hf")
    weights = _hf_weights(tmp_path / "hf")
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], np.asarray(jax.device_get(model.embed[...])))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == 512

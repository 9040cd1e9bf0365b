"""Any saved step of an SFT or RL run as an HF directory (config.json + safetensors + tokenizer files).
The workdir and the output may be cloud URLs (gs://bucket/run); the run's model, when an HF directory, must be
readable on this host.

    python -m oresearcher.export --workdir=/tmp/sft --out=/tmp/sft-step200               # the newest step
    python -m oresearcher.export --workdir=/tmp/sft --step=100 --out=/tmp/sft-step100

The run's own workdir/config.json says which model it trained (a preset with its overrides, an HF directory or
"gguf:embedded") and which tokenizer; the model is rebuilt as shapes only and just the parameters ("params", the
same subtree in SFT and RL checkpoints) are read from workdir/checkpoints/STEP, sharded over every local device
(fsdp), so neither the optimizer moments nor a second copy of the weights are ever in memory. The result loads
with transformers' AutoModelForCausalLM and is what RL's config.init_checkpoint and oresearcher.serve take.

`write_hf` is the one place a policy is written in HF layout: the end-of-run export_dir of SFT and RL uses it too.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import nnx

from oresearcher import checkpoint as checkpoint_lib
from oresearcher import paths, sharding


class ExportError(ValueError):
    """The workdir has no config.json or checkpoints, or not the requested step."""


def write_hf(model, tokenizer, out: str | Path, *, log_prefix: str = "export"):
    """Write `model` (an oresearcher Decoder) and `tokenizer` to `out` in HF layout; every process of a multi-host
    job must call it (each parameter is gathered to process 0, which writes). A cloud URL (gs://bucket/policy)
    is written through a local temporary directory, one file copied up at a time."""
    import tempfile

    from oresearcher.model import save_hf

    tokenizer = tokenizer if hasattr(tokenizer, "save") else None
    if not paths.is_cloud(out):
        path = save_hf(model, out, tokenizer=tokenizer)
    else:
        with tempfile.TemporaryDirectory(prefix="oresearcher-export-") as local:
            save_hf(model, local, tokenizer=tokenizer)
            path = paths.path(out)
            if jax.process_index() == 0:
                path.mkdir(parents=True, exist_ok=True)
                for f in sorted(Path(local).iterdir()):
                    paths.path(f).copy(path / f.name, overwrite=True)
    if jax.process_index() == 0:
        print(f"{log_prefix}: exported the policy to {out}", flush=True)
    return path


def run_config(workdir: str | Path):
    """The ConfigDict a run saved in workdir/config.json."""
    from ml_collections import ConfigDict

    path = paths.path(workdir) / "config.json"   # the workdir may be a cloud URL (gs://bucket/run)
    if not path.exists():
        raise ExportError(f"{path} not found: --workdir must be the workdir of an SFT or RL run "
                          "(python -m oresearcher.train writes config.json there)")
    return ConfigDict(json.loads(path.read_text()))


def model_config(config):
    """(ModelConfig, tokenizer) of the model that `config` trains, without reading any weights when the model is
    a preset or an HF directory (the embedded GGUF model is small and is read whole)."""
    from oresearcher import sft
    from oresearcher.model import PRESETS, Tokenizer, from_hf_config, load_gguf

    spec = str(config.model)
    changes, dtypes = sft.model_dtypes(config)
    if spec in PRESETS:
        return sft.preset_config(config), sft.load_tokenizer(str(config.tokenizer))
    if spec == "gguf:embedded":
        model, tokenizer = load_gguf(**dtypes, **changes)
        return model.cfg, tokenizer
    hf_config = paths.path(spec) / "config.json"
    if not hf_config.exists():
        raise ExportError(f"the run's model {spec!r} is neither a preset, 'gguf:embedded' nor an HF directory "
                          f"readable here ({hf_config} not found); export on a host that can read it")
    cfg = from_hf_config(json.loads(hf_config.read_text()), where=str(hf_config), **dtypes, **changes)
    return cfg, Tokenizer.from_dir(paths.local_copy(spec, skip_suffixes=(".safetensors",)))  # no weights


def restore_policy(workdir: str | Path, step: int | None = None, mesh=None):
    """(model, tokenizer, step): the Decoder holding the parameters saved at `step` (default: the newest) of the
    run in `workdir`, sharded on `mesh` (default: fsdp over every device)."""
    from oresearcher.model import Decoder

    workdir = paths.path(workdir)
    config = run_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []
    if not steps:
        raise ExportError(f"no checkpoints in {ckpt_dir}: the run saved none yet (it saves every "
                          f"config.checkpoint_every={config.get('checkpoint_every')} steps and at its end)")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise ExportError(f"no checkpoint of step {step} in {ckpt_dir}; the kept steps are {steps} "
                          "(older ones are deleted: config.keep_checkpoints)")
    cfg, tokenizer = model_config(config)
    mesh = mesh if mesh is not None else sharding.make_mesh({"fsdp": -1})
    rules = None if config.get("rules") is None else tuple(tuple(r) for r in config.rules)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    shardings = sharding.param_shardings(params, mesh, rules if rules is not None else sharding.RULES)
    target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), nnx.to_pure_dict(params),
                          nnx.to_pure_dict(shardings))
    ckpt = checkpoint_lib.Checkpointer(ckpt_dir, keep=None, async_save=False)  # keep=None: opening deletes nothing
    try:
        ckpt.check_model(step, {"params": target})
        restored = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    nnx.replace_by_pure_dict(params, restored)
    model = nnx.merge(graphdef, params)
    model.set_sharding(mesh, rules if rules is not None else sharding.RULES)
    return model, tokenizer, step


def export(workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Write step `step` (default: the newest) of the run in `workdir` to `out` in HF layout."""
    model, tokenizer, step = restore_policy(workdir, step)
    return write_hf(model, tokenizer, out, log_prefix=f"export: step {step} of {workdir}")


def main(argv) -> None:
    import sys

    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every read phase at INFO
    f = flags.FLAGS
    try:
        export(f.workdir, f.out, f.step)
    except (ExportError, checkpoint_lib.CheckpointError) as e:
        print(f"oresearcher.export: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "the workdir of an SFT or RL run (config.json + checkpoints/)")
    flags.DEFINE_integer("step", None, "the saved step to export; default: the newest")
    flags.DEFINE_string("out", None, "the HF directory to write (config.json, safetensors, tokenizer files)")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)

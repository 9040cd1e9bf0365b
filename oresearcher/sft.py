"""Supervised fine-tuning of the policy on research trajectories (PAPER §5): masked next-token loss.

    python -m oresearcher.train --config=configs/sft.py:tiny --config.workdir=/tmp/sft

Only assistant-authored tokens are trained: system/user tokens and every <observation> span are masked
(oresearcher.data.tokenize_record). Examples are packed into rows of `seq_len` tokens with segment ids, so
attention stays inside an example, and the loss is the mean over every unmasked token of the whole
(accumulated) batch. The loop below reads top to bottom:

    mesh -> model + tokenizer -> data -> train state + jitted step -> restore -> loop (log, eval, checkpoint)

For scripts (benchmarks, comparisons), `make_train_step` builds the sharded state and the jitted step for any
model without touching files.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oresearcher import checkpoint as checkpoint_lib
from oresearcher import losses, optim, paths, sharding
from oresearcher import metrics as metrics_lib
from oresearcher.preemption import NonFiniteError, PreemptionGuard, check_finite

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")


# ============================================================================================ Model
def build_model(config, mesh, rules):
    """(model, tokenizer) per config.model: a preset of oresearcher.model.PRESETS (random init, with
    config.model_overrides; tokenizer from config.tokenizer), "gguf:embedded" (SmolLM2-135M-Instruct), or an
    HF directory. config.param_dtype / compute_dtype / remat / attention override the model's own when set."""
    from oresearcher.model import PRESETS, Decoder, Tokenizer, load_gguf, load_hf

    spec = str(config.model)
    changes, dtypes = model_dtypes(config)
    if spec == "gguf:embedded":
        model, tokenizer = load_gguf(mesh=mesh, rules=rules, **dtypes, **changes)
    elif spec in PRESETS:
        cfg = preset_config(config)
        model = Decoder(cfg, rngs=nnx.Rngs(int(config.seed)))
        tokenizer = load_tokenizer(str(config.tokenizer))
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"model preset {spec!r}: vocab_size {cfg.vocab_size} < the tokenizer's "
                             f"{tokenizer.vocab_size}; set --config.model_overrides.vocab_size={tokenizer.vocab_size}")
    elif paths.path(spec).is_dir():
        local = paths.local_copy(spec)   # gs://bucket/model: copied to this host's cache once (memory-mapped)
        model, tokenizer = load_hf(local, mesh=mesh, rules=rules, **dtypes, **changes), Tokenizer.from_dir(local)
    else:
        raise ValueError(f"config.model={spec!r}: use a preset ({sorted(PRESETS)}), 'gguf:embedded' or an HF "
                         "directory (config.json + safetensors + tokenizer)")
    sharding.shard_model(model, mesh, rules)
    return model, tokenizer


def model_dtypes(config) -> tuple[dict, dict]:
    """(ModelConfig field overrides, {"param_dtype", "compute_dtype"}) from config.param_dtype / compute_dtype /
    remat / attention: applied while loading, so big checkpoints land sharded in their dtype."""
    changes = {k: str(config[k]) for k in ("compute_dtype", "remat", "attention") if config.get(k)}
    dtypes = {"param_dtype": str(config.get("param_dtype") or "float32"),
              "compute_dtype": changes.pop("compute_dtype", "float32")}
    return changes, dtypes


def preset_config(config):
    """The ModelConfig of preset config.model with config.model_overrides and the dtype / remat / attention
    overrides (a preset keeps its own dtypes unless they are set)."""
    from oresearcher.model import PRESETS, overrides_from

    changes = {k: str(config[k]) for k in ("remat", "attention") if config.get(k)}
    for key in ("param_dtype", "compute_dtype"):
        if config.get(key):
            changes[key] = str(config[key])
    return dataclasses.replace(PRESETS[str(config.model)],
                               **{**overrides_from(config.get("model_overrides")), **changes})


def load_tokenizer(spec: str):
    """The tokenizer of an HF directory, or of the embedded GGUF model ("gguf:embedded")."""
    from oresearcher.model import Tokenizer, load_gguf
    if spec == "gguf:embedded":
        return load_gguf()[1]
    return Tokenizer.from_dir(spec)


# ==================================================================================== Update step
@dataclasses.dataclass
class TrainStep:
    """The sharded train state and the jitted functions over it.

    state: {"step": int32 [], "params": nested dict of arrays (nnx pure dict), "opt_state": optax state}
    step(state, batch) -> (state, metrics)   state donated; batch arrays [B, T] sharded by `batch_sharding`
    eval(params, batch) -> (loss_sum, tokens)
    """
    graphdef: nnx.GraphDef
    state: dict
    state_shardings: dict
    batch_sharding: jax.sharding.NamedSharding
    step: callable
    eval: callable
    schedule: callable

    def model(self, params=None):
        """An nnx Decoder view of `params` (default: the current state's)."""
        return nnx.merge(self.graphdef, self.state["params"] if params is None else params)

    def put_batch(self, batch: dict) -> dict:
        """This process's numpy rows [B / process_count, T] -> global [B, T] arrays sharded on the mesh."""
        if jax.process_count() > 1 and self.batch_sharding.is_fully_replicated:
            # A replicated batch would make every process's rows "the" global batch: silently inconsistent.
            raise ValueError(f"data.batch_size cannot be split over the mesh's batch axes "
                             f"({dict(self.batch_sharding.mesh.shape)}) across {jax.process_count()} processes: "
                             f"use a multiple of data x fsdp")
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[k]))
                for k in BATCH_KEYS}


def make_train_step(model, tx: optax.GradientTransformation, schedule, mesh, rules=None, *, grad_accum: int = 1,
                    loss_chunk: int = 512, loss_remat: bool = True,
                    batch_shape: tuple[int, int] | None = None) -> TrainStep:
    """Split `model` (already sharded with `sharding.shard_model`) into params + graph and build the jitted step.

    The step computes the token-mean loss over the whole batch with `grad_accum` sequential microbatches
    (optim.accumulate_gradients), applies AdamW, and reports loss, grad_norm, lr, loss tokens and the masked
    fraction. In/out shardings are explicit and the state is donated, so params and moments are updated in place.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    # Adam moments take their parameter's sharding (FSDP shards the optimizer state too); scalars replicate.
    opt_state = jax.jit(tx.init)(params)
    opt_sh = _moment_shardings(opt_state, params, param_sh, mesh)
    opt_state = jax.device_put(opt_state, opt_sh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), replicated), "params": params, "opt_state": opt_state}
    state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh}
    batch_sh = sharding.logical_sharding(("activation_batch", "activation_length"), mesh, rules, batch_shape)

    train_step = train_step_fn(graphdef, tx, schedule, grad_accum=grad_accum, loss_chunk=loss_chunk,
                               loss_remat=loss_remat)
    step = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                   donate_argnums=0)
    evaluate = jax.jit(_loss_sums_fn(graphdef, loss_chunk, loss_remat), in_shardings=(param_sh, batch_sh),
                       out_shardings=replicated)
    return TrainStep(graphdef, state, state_sh, batch_sh, step, evaluate, schedule)


def _loss_sums_fn(graphdef, loss_chunk: int, loss_remat: bool):
    def loss_sums(params, batch):
        return losses.cross_entropy_sums(nnx.merge(graphdef, params), batch, loss_chunk, loss_remat)
    return loss_sums


def train_step_fn(graphdef, tx: optax.GradientTransformation, schedule, *, grad_accum: int = 1,
                  loss_chunk: int = 512, loss_remat: bool = True):
    """The pure update step train_step(state, batch) -> (state, metrics) that make_train_step jits.

    Module-level so that oresearcher.aot can compile exactly this function against abstract (ShapeDtypeStruct)
    state for a TPU/GPU target on a CPU host, without building the state."""
    loss_sums = _loss_sums_fn(graphdef, loss_chunk, loss_remat)

    def train_step(state, batch):
        loss, grads, tokens = optim.accumulate_gradients(loss_sums, state["params"], batch, grad_accum)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        real = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
        # param_norm catches an update that overflowed (e.g. a huge lr) in the very step that made it, before the
        # state can be checkpointed; loss and grad_norm would only show it one step later.
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params),
                   "lr": schedule(state["step"]), "loss_tokens": tokens,
                   "masked_fraction": 1.0 - tokens / jnp.maximum(real, 1.0)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def _moment_shardings(opt_state, params, param_sh, mesh):
    """Any optimizer-state subtree shaped like `params` gets the params' shardings; everything else replicates."""
    param_struct = jax.tree.structure(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def walk(node):
        if jax.tree.structure(node) == param_struct:
            return param_sh
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(c) for c in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(c) for c in node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return jax.tree.map(lambda _: replicated, node)

    return walk(opt_state)


# ========================================================================================== The run
def run(config, devices=None) -> dict:
    """Train per `config` (configs/sft.py) on `devices` (default: all); returns the last logged metrics. Exits
    early (returning) on SIGTERM after saving a checkpoint; raises NonFiniteError on a NaN/Inf loss with the last
    good checkpoint kept."""
    workdir = paths.path(config.workdir)   # a local directory or a cloud URL (gs://bucket/run)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    guard = PreemptionGuard()  # before anything slow, so an early SIGTERM is seen at the first step boundary

    # ---------------------------------------------------------------- Set up mesh
    # Every array is placed by logical axis names through the rules table (config.rules, data not code).
    mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
    rules = None if config.rules is None else tuple(tuple(r) for r in config.rules)
    print(f"sft: mesh {dict(mesh.shape)} on {mesh.size} {jax.devices()[0].platform} device(s)", flush=True)

    # ---------------------------------------------------------------- Model, tokenizer, data
    model, tokenizer = build_model(config, mesh, rules)
    if jax.process_index() == 0:
        print(metrics_lib.parameter_overview(model), flush=True)
    d = config.data
    batches, eval_set = build_data(config, tokenizer)

    # ---------------------------------------------------------------- Train state and update step
    total_steps = int(config.total_steps)
    tx, schedule = optim.make_optimizer(config.optim, total_steps)
    trainer = make_train_step(model, tx, schedule, mesh, rules, grad_accum=int(config.grad_accum),
                              loss_chunk=int(config.loss_chunk), loss_remat=bool(config.loss_remat),
                              batch_shape=(int(d.batch_size), int(d.seq_len)))
    model_cfg = model.cfg
    del model  # the train state owns the parameters from here on (the step donates them)

    # ---------------------------------------------------------------- Checkpointing
    # Restore onto *this* run's mesh: the target carries the new shardings, whatever mesh wrote the checkpoint.
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", keep=int(config.keep_checkpoints))
    state, start = trainer.state, 0
    resumed = ckpt.restore_latest(checkpoint_lib.abstract_like(state, trainer.state_shardings),
                                  log=lambda line: print(f"sft: {line}", flush=True))
    if resumed is not None:
        start, state, data_state = resumed
        batches.set_state(data_state)
        print(f"sft: resumed from {ckpt.directory}/{start}", flush=True)
    trainer.state = None

    # ---------------------------------------------------------------- Train loop
    flops_per_token = metrics_lib.train_flops_per_token(model_cfg, int(d.seq_len))
    peak = metrics_lib.peak_flops_per_device(float(config.peak_flops_per_device)) * mesh.size
    writer = metrics_lib.MetricsWriter(workdir, total_steps, start_step=start, progress=bool(config.progress))
    profiler = metrics_lib.StepProfiler(workdir, config.get("profile"))
    last, window_tokens, window_start = {}, 0, time.perf_counter()
    window = metrics_lib.WindowMeans.empty()
    step = start
    try:
        while step < total_steps:
            if guard.should_stop():
                ckpt.save(step, state, batches.get_state(), wait=True)
                print(f"sft: {guard.signal_name} at step {step}: checkpoint saved, exiting", flush=True)
                return last
            batch = trainer.put_batch(next(batches))
            profiler.before(step + 1)
            state, m = trainer.step(state, batch)
            step += 1
            profiler.after(step, m)
            m = jax.device_get(m)
            check_finite(step, m, ("loss", "grad_norm", "param_norm"))  # before this state can be checkpointed
            window = window.merge(metrics_lib.WindowMeans.single_from_model_output(**m))
            window_tokens += int(d.batch_size) * int(d.seq_len)
            writer.advance(step)

            if step % int(config.log_every) == 0 or step in (1, total_steps):  # step 1: the starting loss
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / max(elapsed, 1e-9)
                means = {k: float(v) for k, v in window.compute().items()}   # over the window's steps
                last = {**means, "tokens_per_sec": tps, "mfu": tps * flops_per_token / peak, "lr": float(m["lr"]),
                        "masked_fraction": float(m["masked_fraction"]), "loss_tokens": int(m["loss_tokens"])}
                if eval_set and int(config.eval_every) and step % int(config.eval_every) == 0:
                    last["eval_loss"] = evaluate(trainer, state["params"], eval_set)
                writer.write(step, last)
                writer.echo(f"sft: step {step}/{total_steps} loss {last['loss']:.4f}"
                            + (f" eval_loss {last['eval_loss']:.4f}" if "eval_loss" in last else "")
                            + f" grad_norm {last['grad_norm']:.3f} {tps:,.0f} tokens/s")
                window_tokens, window_start = 0, time.perf_counter()
                window = metrics_lib.WindowMeans.empty()
            if step % int(config.checkpoint_every) == 0 or step == total_steps:
                ckpt.save(step, state, batches.get_state())
    except NonFiniteError as e:
        ckpt.wait()  # a save started before the bad step finishes, so the message names a complete checkpoint
        raise NonFiniteError(f"{e} Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}.") from None
    finally:
        profiler.stop()
        writer.close()
        ckpt.close()
        guard.restore_handlers()
    _export(config, trainer, state, tokenizer)
    return last


def build_data(config, tokenizer):
    """(train batch iterator with get_state/set_state, list of held-out batches) per config.data.

    Bad records are named and skipped or stop the run (data.on_bad_record); the counts are printed. Each process
    of a multi-host job reads its share of the rows (oresearcher.data.train_batches)."""
    from oresearcher import data as data_lib

    d = config.data
    seq_len, batch_size = int(d.seq_len), int(d.batch_size)
    sources = [p.strip() for p in str(d.train).split(",") if p.strip()]
    examples, stats = data_lib.load_examples(sources, tokenizer, seq_len, str(d.on_bad_record))
    if d.get("eval"):
        train = examples
        held_out, eval_stats = data_lib.load_examples([p.strip() for p in str(d.eval).split(",") if p.strip()],
                                                      tokenizer, seq_len, str(d.on_bad_record))
        print(f"sft: eval records: {eval_stats.summary()}", flush=True)
    else:
        train, held_out = data_lib.split_examples(examples, float(d.eval_fraction))
    tokens = sum(len(e.input_ids) for e in train)
    trained = sum(int(np.sum(e.loss_mask)) for e in train)
    print(f"sft: records from {', '.join(sources)}: {stats.summary()}; {len(train)} train / {len(held_out)} held "
          f"out examples; {tokens} train tokens, {trained} trained ({trained / max(tokens, 1):.0%})", flush=True)
    for name, example in sorted(stats.examples.items()):
        print(f"sft: skipped {stats.skipped[name]} record(s) for {name}, e.g. {example}", flush=True)
    if not train:
        raise ValueError(f"no trainable records in {sources} ({stats.summary()}): check the files or data.seq_len")
    pad_id = int(tokenizer.pad_id or 0)
    if batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={batch_size} must be a multiple of the {jax.process_count()} processes: "
                         f"every process loads an equal share of each batch; set --config.data.batch_size")
    per_process = batch_size // jax.process_count()
    batches = iter(data_lib.train_batches(train, seq_len=seq_len, batch_size=per_process, seed=int(config.seed),
                                          pad_id=pad_id, process_index=jax.process_index(),
                                          process_count=jax.process_count()))
    eval_set = (data_lib.eval_batches(held_out, seq_len=seq_len, batch_size=per_process, pad_id=pad_id)
                if held_out else [])
    return batches, eval_set


def evaluate(trainer: TrainStep, params, eval_batches) -> float:
    """Token-mean loss over the held-out batches."""
    total, count = 0.0, 0.0
    for b in eval_batches:
        s, n = jax.device_get(trainer.eval(params, trainer.put_batch(b)))
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


def _export(config, trainer: TrainStep, state, tokenizer) -> None:
    """Write the final policy in HF layout (config.export_dir), for RL's init_checkpoint and for serving."""
    if config.get("export_dir"):
        from oresearcher.export import write_hf
        write_hf(trainer.model(state["params"]), tokenizer, paths.under(config.workdir, config.export_dir),
                 log_prefix="sft")


def summary(workdir: str | Path) -> list[dict]:
    """The metrics.jsonl rows of a run (for tests and plots)."""
    path = paths.path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

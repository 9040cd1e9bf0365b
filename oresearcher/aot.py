"""Ahead-of-time proof that a preset fits its target: compile the real train step for TPU/GPU on a CPU host.

    python -m oresearcher.aot --config=configs/rl.py:qwen2.5-7b-gpu8             # its target: gpu:h100x8
    python -m oresearcher.aot --config=configs/sft.py:qwen2.5-72b-v5p128-64k     # its target: tpu:v5p-128
    python -m oresearcher.aot --config=configs/sft.py:qwen2.5-7b-gpu8-64k --target=gpu:h200x8   # another one

Every accelerator preset names the target it is sized for (config.aot_target); --target overrides it.

Nothing here needs an accelerator. The compiler for the target runs on this machine:
  TPU  libtpu (PyPI) describes any slice (`jax.experimental.topologies.get_topology_desc`), and XLA:TPU compiles
       for it, Pallas kernels included.
  GPU  the CUDA PJRT plugin (jax-cuda12-plugin, jax-cuda12-pjrt) builds a GPU topology from a
       `GpuTargetConfigProto` (the device description XLA would otherwise read from a live GPU: SM count, shared
       memory, compute capability ...) and compiles for it. GPU_SPECS below holds those descriptions.

The step is lowered with abstract arrays (jax.ShapeDtypeStruct carrying the NamedSharding the trainer would use)
on a mesh of the target's devices, so no parameter is ever allocated. The compiled executable's memory analysis is
per device:
    arguments  params + optimizer state + batch resident on each device
    outputs    the new state and metrics (aliased to the arguments when the step donates its state)
    temporaries activations, gradients, collective buffers: everything XLA allocates while the step runs
    peak       XLA's peak, or arguments + outputs - aliased + temporaries where the backend reports none
               (GPU: plus GPU_AOT_MARGIN, see below)
and the last line printed is `fits: yes|no (peak X GiB of Y GiB)`; the exit code is 0 if it fits, 3 if not.
XLA:TPU refuses to finish a program that cannot fit; its own figures then make the "no".

Targets: `tpu:v5e-<chips>`, `tpu:v6e-<chips>`, `tpu:v5p-<TensorCores>` (v5e-8, v5e-256, v5p-128, v6e-256, ...),
and `gpu:h100x8`, `gpu:h100x16` (two hosts), `gpu:h200x8`, `gpu:a100x8` (any `gpu:<model>x<n>`, 8 per host).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

GiB = 1024 ** 3

# --------------------------------------------------------------------------------------------------- targets
# Per-chip HBM a program may use (bytes; what XLA:TPU reports as "available HBM" when a program does not fit:
# 16 GiB parts offer 15.75, 32 GiB 31.25, 96 GiB 95.74), and how many TensorCores a "-N" slice name counts per
# chip (v5p counts cores, two per chip; v5e/v6e count chips).
TPU_CHIPS = {
    "v5e": {"hbm": int(15.75 * GiB), "cores_per_chip": 1},
    "v5p": {"hbm": int(95.74 * GiB), "cores_per_chip": 2},
    "v6e": {"hbm": int(31.25 * GiB), "cores_per_chip": 1},
}
# chips -> physical topology (2-D tori for v5e/v6e, 3-D for v5p): the names libtpu's topology builder takes.
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}

# GpuTargetConfigProto contents per GPU model: what XLA:GPU reads off a live device before compiling. The H100
# entry matches cudaGetDeviceProperties on a real H100 SXM (80GB HBM3) field for field; the others are the
# vendors' data-sheet figures in the same fields. `memory` is the whole HBM as CUDA reports it; the allocator
# gets `mem_fraction` of it.
GPU_SPECS: dict[str, dict[str, Any]] = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", cc=(9, 0), core_count=132, memory=85_017_493_504,
                 bandwidth=3_352_320_000_000, l2=52_428_800, clock_ghz=1.98, smem_per_core=233_472,
                 smem_optin=232_448),
    "h200": dict(name="NVIDIA H200", cc=(9, 0), core_count=132, memory=150_754_820_096,
                 bandwidth=4_800_000_000_000, l2=62_914_560, clock_ghz=1.98, smem_per_core=233_472,
                 smem_optin=232_448),
    "a100": dict(name="NVIDIA A100-SXM4-80GB", cc=(8, 0), core_count=108, memory=85_097_971_712,
                 bandwidth=2_039_000_000_000, l2=41_943_040, clock_ghz=1.41, smem_per_core=167_936,
                 smem_optin=166_912),
}
GPUS_PER_HOST = 8
# A deviceless GPU compile cannot autotune (GEMM algorithms, their workspaces), so its temporaries differ from a
# compile on the GPU itself: on a real H100 (jax 0.11.2) a 4-layer, 8k-token train step measured
# peak_bytes_in_use 2.898 GB = the on-device compile's peak, while the compile from this target config said
# 2.764 GB (4.6% less). GPU peaks are therefore reported with this margin added.
GPU_AOT_MARGIN = 0.05


def gpu_target_config(model: str) -> str:
    """The GpuTargetConfigProto (text format) for one GPU model of GPU_SPECS."""
    s = GPU_SPECS[model]
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {s['smem_per_core']}", "  threads_per_core_limit: 2048",
        f"  core_count: {s['core_count']}", "  fpus_per_core: 128",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {s['bandwidth']}", f"  l2_cache_size: {s['l2']}",
        f"  clock_rate_ghz: {s['clock_ghz']}", f"  device_memory_size: {s['memory']}",
        f"  shared_memory_per_block_optin: {s['smem_optin']}",
        f"  cuda_compute_capability {{ major: {s['cc'][0]} minor: {s['cc'][1]} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info { major: 9 minor: 8 patch: 0 }",
        "runtime_version { major: 12 minor: 8 patch: 0 }",
        f'device_description_str: "{s["name"]}"',
    ]) + "\n"


@dataclasses.dataclass
class Target:
    """A compile target: its (compile-only) devices and the memory one device offers a JAX program."""
    spec: str
    platform: str  # "tpu" | "gpu"
    devices: list
    capacity: int  # bytes per device
    description: str


def _tpu_target(spec: str, name: str) -> Target:
    m = re.fullmatch(r"(v5e|v5p|v6e)-(\d+)", name)
    if not m:
        raise ValueError(f"--target={spec}: TPU slices are spelled like tpu:v5e-8, tpu:v5p-128, tpu:v6e-256 "
                         f"(generations {sorted(TPU_CHIPS)})")
    gen, n = m.group(1), int(m.group(2))
    chip = TPU_CHIPS[gen]
    chips = n // chip["cores_per_chip"]
    table = _TORUS_3D if gen == "v5p" else _TORUS_2D
    if chips not in table:
        raise ValueError(f"--target={spec}: no {gen} slice with {chips} chips; sizes: "
                         f"{sorted(k * chip['cores_per_chip'] for k in table)}")
    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; a compile-only client drives
    # none, and without this a second process (a parallel test worker, any JAX program started without
    # JAX_PLATFORMS=cpu on the same host) would make the topology call fail.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=f"{gen}:{table[chips]}")
    except (RuntimeError, NotImplementedError) as e:
        if importlib.util.find_spec("libtpu") is not None:
            raise
        raise RuntimeError(f"--target={spec}: libtpu is not installed; pip install -e '.[aot]'") from e
    kind = topo.devices[0].device_kind
    return Target(spec, "tpu", list(topo.devices), chip["hbm"],
                  f"{len(topo.devices)} x {kind} ({gen} {table[chips]}), {chip['hbm'] / GiB:.2f} GiB HBM per chip")


def _gpu_target(spec: str, name: str, mem_fraction: float) -> Target:
    m = re.fullmatch(r"([a-z]\d+)x(\d+)", name)
    if not m or m.group(1) not in GPU_SPECS:
        raise ValueError(f"--target={spec}: GPU targets are spelled like gpu:h100x8 (one host) or gpu:h100x16 "
                         f"(two hosts); models: {sorted(GPU_SPECS)}")
    model, n = m.group(1), int(m.group(2))
    hosts = max(1, math.ceil(n / GPUS_PER_HOST))
    if n % hosts:
        raise ValueError(f"--target={spec}: {n} GPUs do not split evenly over {hosts} hosts of {GPUS_PER_HOST}")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no CUDA runtime here: skip its version probe
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="cuda", topology=f"1x{hosts}x{n // hosts}",
                                            target_config=gpu_target_config(model))
    except NotImplementedError as e:
        raise RuntimeError(f"--target={spec}: the CUDA PJRT plugin is not installed; "
                           f"pip install -e '.[aot]'") from e
    total = GPU_SPECS[model]["memory"]
    return Target(spec, "gpu", list(topo.devices), int(total * mem_fraction),
                  f"{n} x {GPU_SPECS[model]['name']} on {hosts} host(s); {mem_fraction:.2f} of "
                  f"{total / GiB:.1f} GiB per GPU for the allocator (XLA_PYTHON_CLIENT_MEM_FRACTION)")


def make_target(spec: str, mem_fraction: float = 0.95) -> Target:
    """`tpu:v5p-128` / `gpu:h100x8` -> Target with compile-only devices."""
    platform, _, name = spec.partition(":")
    if platform == "tpu":
        return _tpu_target(spec, name)
    if platform == "gpu":
        return _gpu_target(spec, name, mem_fraction)
    raise ValueError(f"--target={spec}: expected tpu:<slice> (e.g. tpu:v5p-128) or gpu:<model>x<n> "
                     f"(e.g. gpu:h100x8)")


# ---------------------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class MemoryReport:
    """Per-device bytes from the compiled executable's memory analysis."""
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    peak: int
    capacity: int
    margin: float = 0.0  # fraction added to XLA's peak (GPU_AOT_MARGIN on GPU targets)

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    @classmethod
    def of(cls, compiled, capacity: int, margin: float = 0.0) -> MemoryReport:
        m = compiled.memory_analysis()
        args, outs, alias = m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes
        temps, code = m.temp_size_in_bytes, m.generated_code_size_in_bytes
        peak = getattr(m, "peak_memory_in_bytes", 0) or 0
        peak = max(peak, args + outs - alias + temps)  # never report less than the live buffers add up to
        return cls(args, outs, alias, temps, code, int(peak * (1 + margin)), capacity, margin)

    @classmethod
    def out_of_memory(cls, error: Exception, capacity: int) -> MemoryReport | None:
        """XLA:TPU refuses to finish a compile that cannot fit ("RESOURCE_EXHAUSTED: ... required for HLO
        temporaries (64.01G) exceeds available HBM (15.75G)"); its figures become a report that does not fit."""
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text:
            return None
        units = {"K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 * GiB}
        sizes = [float(x) * units[u] for x, u in re.findall(r"\(([\d.]+)([KMGT])\)", text)]
        if not sizes:
            return None
        available = int(sizes[1]) if len(sizes) > 1 else capacity
        return cls(0, 0, 0, int(sizes[0]), 0, int(sizes[0]), available)

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GiB:9.2f} GiB"
        return [f"  arguments    {g(self.arguments)}", f"  outputs      {g(self.outputs)}",
                f"  aliased      {g(self.aliased)}", f"  temporaries  {g(self.temporaries)}",
                f"  code         {g(self.code)}",
                f"  peak         {g(self.peak)}"
                + (f"  (XLA's figure + {self.margin:.0%} margin)" if self.margin else ""),
                f"  capacity     {g(self.capacity)}",
                f"fits: {'yes' if self.fits else 'no'} "
                f"(peak {self.peak / GiB:.2f} GiB of {self.capacity / GiB:.2f} GiB)"]


def compile_on(target: Target, fn: Callable, *abstract_args, donate_argnums=(), in_shardings=None,
               out_shardings=None):
    """jit(fn).lower(abstract args).compile() for the target (shardings live on the abstract args)."""
    import jax

    jitted = jax.jit(fn, donate_argnums=donate_argnums, in_shardings=in_shardings, out_shardings=out_shardings)
    return jitted.lower(*abstract_args).compile()


# ----------------------------------------------------------------------------------------- the train steps
def _abstract_batch(mesh, rules, batch_size: int, length: int):
    """ShapeDtypeStructs for a packed batch [B, T] (data.packing's fields), sharded as the trainer places it."""
    import jax
    import jax.numpy as jnp

    from oresearcher import sharding

    spec = sharding.logical_sharding(("activation_batch", "activation_length"), mesh, rules, (batch_size, length))
    batch = {k: jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=spec)
             for k in ("input_ids", "targets", "positions", "segment_ids")}
    batch["loss_mask"] = jax.ShapeDtypeStruct((batch_size, length), jnp.bool_, sharding=spec)
    return batch


def _abstract_state(model_cfg, make_optimizer, mesh, rules):
    """(graphdef, abstract sharded state) of (model, optimizer) without allocating a parameter."""
    import jax
    from flax import nnx

    from oresearcher import sharding
    from oresearcher.model import Decoder

    def build():
        model = Decoder(model_cfg, rngs=nnx.Rngs(0))
        return model, make_optimizer(model)

    model, optimizer = nnx.eval_shape(build)
    model.set_sharding(mesh, rules)
    graphdef, state = nnx.split((model, optimizer))
    shardings = sharding.param_shardings(state, mesh, rules)

    def place(var, s):
        return jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=s)

    abstract = jax.tree.map(place, state, shardings, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return graphdef, abstract


def _stateful(graphdef, step: Callable, *static):
    """A pure (state, batch) -> (new state, metrics) around an NNX step(model, optimizer, batch, ...)."""
    from flax import nnx

    def pure(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = step(model, optimizer, batch, *static)
        return nnx.state((model, optimizer)), metrics

    return pure


STEP_BUILDERS: dict[str, Callable] = {}


def step_builder(stage: str):
    def deco(fn):
        STEP_BUILDERS[stage] = fn
        return fn
    return deco


@step_builder("sft")
def _sft_step(config, model_cfg, mesh, rules):
    """SFT's update step (oresearcher.sft.train_step_fn: chunked cross-entropy, gradient accumulation, AdamW) on
    one batch of data.batch_size packed rows of data.seq_len tokens, with make_train_step's shardings."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from oresearcher import optim, sft, sharding
    from oresearcher.model import Decoder

    model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    model.set_sharding(mesh, rules)
    graphdef, pstate = nnx.split(model, nnx.Param)
    param_sh = nnx.to_pure_dict(sharding.param_shardings(pstate, mesh, rules))
    params = jax.tree.map(lambda v, sh: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh),
                          nnx.to_pure_dict(pstate), param_sh)
    tx, schedule = optim.make_optimizer(config.optim, int(config.total_steps))
    opt_state = jax.eval_shape(tx.init, params)
    opt_sh = sft._moment_shardings(opt_state, params, param_sh, mesh)
    opt_state = jax.tree.map(lambda v, sh: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh), opt_state, opt_sh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), "params": params,
             "opt_state": opt_state}
    batch = _abstract_batch(mesh, rules, int(config.data.batch_size), int(config.data.seq_len))
    step = sft.train_step_fn(graphdef, tx, schedule, grad_accum=int(config.grad_accum),
                             loss_chunk=int(config.loss_chunk), loss_remat=bool(config.get("loss_remat", True)))
    return step, (state, batch)


@step_builder("rl")
def _rl_step(config, model_cfg, mesh, rules):
    """GRPO's update (oresearcher.rl.grpo.update_fn, as grpo.Updater jits it) on one minibatch of the longest
    episodes the config allows (rollout.max_tokens), every response token policy-sampled: the worst case for
    memory. The minibatch is questions_per_step x group_size / grpo.minibatches rows, its gradient accumulated
    over microbatches of at most grpo.microbatch_tokens tokens; the batch is whatever rl.rollout.to_batch makes of
    such episodes, placed as grpo.place_batch places it."""
    import jax
    import numpy as np

    from oresearcher import sharding
    from oresearcher.rl import grpo, rollout
    from oresearcher.rl import train as rl_train

    gcfg = grpo.GRPOConfig.from_config(config)
    graphdef, state = _abstract_state(model_cfg, lambda m: rl_train.make_optimizer(m, config), mesh, rules)
    # rl.train._update: (questions x group) / minibatches episodes per optimizer step.
    rows = -(-int(config.questions_per_step) * int(config.rollout.group_size) // int(config.grpo.minibatches))
    length, prompt = int(config.rollout.max_tokens), 1024
    episode = rollout.Episode(question="", group=0, prompt_len=prompt, tokens=[0] * length,
                              policy_mask=[False] * prompt + [True] * (length - prompt), logprobs=[0.0] * length)
    example = rollout.to_batch([episode] * rows, np.zeros(rows, np.float32), int(config.grpo.length_multiple), rows)
    if gcfg.kl_beta:
        example["ref_logp"] = example["old_logp"]
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.logical_sharding(
        ("activation_batch", "activation_length")[:v.ndim], mesh, rules, v.shape)) for k, v in example.items()}
    k = grpo.num_microbatches(rows, example["input_ids"].shape[1], gcfg, grpo.batch_shards(mesh))
    update = grpo.update_fn(graphdef, gcfg, k)
    update.description = f"{k} microbatch(es) of {rows // k} x {example['input_ids'].shape[1]} tokens"
    return update, (state, batch)


# ------------------------------------------------------------------------------------------------------ main
def model_config_for(config, out=print, attention: str = ""):
    """The ModelConfig the trainer would build for config.model, with the same overrides
    (oresearcher.sft.build_model): model_overrides on a preset, and param_dtype / compute_dtype / remat /
    attention from the config (a checkpoint loads as float32 unless param_dtype / compute_dtype say otherwise).

    Shapes are all that matter here, so a checkpoint path resolves to its config.json when it exists on this
    machine, else to the preset its directory name spells (/ckpt/Qwen2.5-72B-Instruct -> qwen2.5-72b).
    `attention` (the --attention flag) replaces the config's kernel.
    """
    import json
    from pathlib import Path

    from oresearcher.model import PRESETS, from_hf_config, overrides_from

    name = str(config.model)
    if name == "gguf:embedded":  # the embedded SmolLM2-135M-Instruct GGUF has the smollm2-135m shapes
        name = "smollm2-135m"
    changes = {k: str(config[k]) for k in ("remat", "attention") if config.get(k)}
    if attention:
        changes["attention"] = attention
    if name in PRESETS:
        cfg = dataclasses.replace(PRESETS[name], **overrides_from(config.get("model_overrides")), **changes)
        dtypes = {k: str(config[k]) for k in ("param_dtype", "compute_dtype") if config.get(k)}
        return dataclasses.replace(cfg, **dtypes)
    if (Path(name) / "config.json").exists():
        cfg = from_hf_config(json.loads((Path(name) / "config.json").read_text()), where=f"{name}/config.json")
    else:
        guess = re.sub(r"(-instruct)?(-sft)?$", "", Path(name.rstrip("/")).name.lower())
        if guess not in PRESETS:
            raise ValueError(f"--config.model={name!r}: not a preset and no config.json here; ahead-of-time "
                             f"compilation needs the shapes: pass --config.model=<preset> ({sorted(PRESETS)})")
        out(f"model: {name} -> preset {guess} (its shapes; no checkpoint is read)")
        cfg = PRESETS[guess]
    return dataclasses.replace(cfg, param_dtype=str(config.get("param_dtype") or "float32"),
                               compute_dtype=str(config.get("compute_dtype") or "float32"), **changes)


PROGRAMS = ("update", "prefill", "decode")


def run(config, target_spec: str = "", mem_fraction: float = 0.95, out=print, attention: str = "",
        programs: tuple[str, ...] = PROGRAMS) -> MemoryReport:
    """Compile config's train step for target_spec (default: the preset's own config.aot_target) and print the
    per-device memory table; for RL also the rollout engine's prefill and decode programs (`programs`: which of
    the three to compile; the verdict then covers those)."""
    from oresearcher import sharding

    target_spec = target_spec or str(config.get("aot_target") or "")
    if not target_spec:
        raise ValueError("no target: this config names none (config.aot_target); pass --target=tpu:v5p-128, "
                         "--target=gpu:h100x8, ...")
    target = make_target(target_spec, mem_fraction)
    stage = str(config.get("stage", "sft"))
    if stage not in STEP_BUILDERS:
        raise ValueError(f"config.stage={stage!r}: no train step to compile; stages: {sorted(STEP_BUILDERS)}")
    rules = tuple(tuple(r) for r in config.rules) if config.get("rules") else sharding.RULES
    split = str(config.get("placement", "colocated")) == "split" and stage == "rl"
    n_rollout = int(config.get("rollout_devices", 0)) if split else 0
    if split and not 0 < n_rollout < len(target.devices):
        raise ValueError(f"placement='split': rollout_devices={n_rollout} must leave devices to both sides of "
                         f"the {len(target.devices)} of {target.spec}")
    # split placement: the trainer on the first devices, the engine on the last rollout_devices (rl/placement.py)
    mesh = sharding.make_mesh(dict(config.mesh), devices=target.devices[:len(target.devices) - n_rollout])
    model_cfg = model_config_for(config, out, attention)
    step, (state, batch) = STEP_BUILDERS[stage](config, model_cfg, mesh, rules)
    out(f"target: {target.spec}: {target.description}")
    out(f"mesh: {dict(mesh.shape)}; model: {config.model} ({model_cfg.num_params / 1e9:.2f} B params, "
        f"params {model_cfg.param_dtype}, compute {model_cfg.compute_dtype}, attention={model_cfg.attention}, "
        f"remat={model_cfg.remat})")
    out(f"batch: {tuple(batch['input_ids'].shape)} tokens per step"
        + (f", {step.description}" if getattr(step, "description", "") else ""))
    import jax

    # The trainers pin the new state to the old state's shardings (so the donated buffers are reused in place)
    # and replicate the metrics.
    state_sh = jax.tree.map(lambda a: a.sharding, state)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    unknown = set(programs) - set(PROGRAMS)
    if unknown or not programs:
        raise ValueError(f"--programs={','.join(programs)}: choose among {','.join(PROGRAMS)}")
    report = None
    if "update" in programs or stage != "rl":
        report = _compile_report(target, lambda: compile_on(target, step, state, batch, donate_argnums=(0,),
                                                            out_shardings=(state_sh, replicated)), out)
    if stage != "rl":
        out("per-device memory:")
        for line in report.lines():
            out(line)
        return report
    if report is not None:
        out("per-device memory of the update:")
        for line in report.lines()[:-1]:
            out(line)
    rollout_mesh = sharding.make_mesh({"fsdp": n_rollout}, devices=target.devices[-n_rollout:]) if split else None
    return _with_engine(config, model_cfg, mesh, target, state, report, out, programs, rollout_mesh)


def _compile_report(target: Target, compile_fn, out) -> MemoryReport:
    """compile_fn() -> compiled program, as a MemoryReport (XLA:TPU's refusal to fit becomes a "no")."""
    try:
        compiled = compile_fn()
    except Exception as e:  # noqa: BLE001 - only an out-of-memory refusal is a result; anything else re-raises
        report = MemoryReport.out_of_memory(e, target.capacity)
        if report is None:
            raise
        out(f"the compiler refused: {str(e).splitlines()[0]}")
        return report
    return MemoryReport.of(compiled, target.capacity, GPU_AOT_MARGIN if target.platform == "gpu" else 0.0)


def _rollout_copy_bytes(config, model_cfg, rollout_mesh) -> int:
    """Bytes per device of split placement's parameter copy: the parameters placed on the rollout mesh by their
    logical axes, as rl/placement.py places them."""
    import jax
    import numpy as np
    from flax import nnx

    from oresearcher import sharding
    from oresearcher.model import Decoder

    rules = tuple(tuple(r) for r in config.rules) if config.get("rules") else sharding.RULES
    params = nnx.state(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = jax.tree.leaves(sharding.param_shardings(params, rollout_mesh, rules))
    return sum(int(np.prod(s.shard_shape(v.shape))) * np.dtype(v.dtype).itemsize
               for v, s in zip(jax.tree.leaves(params), shardings))


def _with_engine(config, model_cfg, mesh, target: Target, train_state, update: MemoryReport | None, out,
                 which=PROGRAMS, rollout_mesh=None) -> MemoryReport:
    """Compile the rollout engine's prefill and decode programs (engine/aot.py) beside the update and report what
    one device holds at the peak of each, the engine and the trainer colocated on the same devices; or, with
    `rollout_mesh` (split placement), the engine on those devices and the trainer on `mesh`, each holding only
    its own arrays (the engine's devices also the rollout's fp32 parameter copy, sharded over them).

    What is resident at once (the assumption): the training state (parameters and Adam moments) always; the
    engine's weight copy, KV cache and logits always too: the engine keeps its cache between rollouts, and with
    asynchronous GRPO (max_staleness > 0) it generates while the trainer updates, from a copy of the parameters
    of its own (rl/train.py), resident too. So
        update   its own peak (training state, batch, activations, gradients) + the engine's resident arrays
        prefill  its own peak (the engine's resident arrays + its temporaries) + the training state
        decode   the same for the decode program
    and the preset fits when the largest of the three does."""
    import jax
    import numpy as np

    from oresearcher.engine import aot as engine_aot

    g = lambda b: f"{b / GiB:.2f} GiB"
    programs = engine_aot.build(config, model_cfg, rollout_mesh or mesh)
    out(f"engine: {programs.slots} slots x {programs.cache_len} cache slots (dense), inference layout "
        f"{programs.plan.describe()}: weights {g(programs.weights)} + cache {g(programs.cache)} per device")
    per_device = lambda tree: sum(int(np.prod(a.sharding.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
                                  for a in jax.tree.leaves(tree))
    state = per_device(train_state)
    resident, what = programs.resident, "engine resident"
    if rollout_mesh is not None:                    # split: nothing of the other side is resident
        copy = _rollout_copy_bytes(config, model_cfg, rollout_mesh)
        out(f"split placement: trainer on {mesh.size} devices, engine on {rollout_mesh.size} (+ the rollout's "
            f"parameter copy {g(copy)} per device)")
        resident, state, what = 0, copy, "nothing: the engine is on its own devices,"
    elif int(config.get("max_staleness", 0)) > 0:     # the rollout's own copy of the parameters
        copy = per_device(train_state[0])           # train_state: the state of (model, optimizer)
        out(f"asynchronous (max_staleness={int(config.max_staleness)}): the rollout's parameter copy {g(copy)} "
            f"per device")
        resident, state, what = resident + copy, state + copy, "engine resident + parameter copy"
    rows = [] if update is None else [("update", update, resident, what)]
    for name in ("prefill", "decode"):
        if name not in which:
            continue
        program = getattr(programs, name)
        report = _compile_report(target, lambda p=program: engine_aot.compile_program(p), out)
        rows.append((f"{name} ({program[3]})", report, state,
                     "parameter copy" if rollout_mesh is not None else
                     "training state" + (" + parameter copy" if resident > programs.resident else "")))
    peak = 0
    for name, report, extra, what in rows:
        total = report.peak + extra
        peak = max(peak, total)
        out(f"{name}: peak {g(report.peak)} (arguments {g(report.arguments)}, temporaries "
            f"{g(report.temporaries)}) + {what} {g(extra)} = {g(total)}")
    if update is None:
        out("update: not compiled (--programs): the verdict below covers the engine's programs only")
    final = dataclasses.replace(update or rows[0][1], peak=peak)
    out(final.lines()[-1])
    return final


def main(argv):
    del argv
    report = run(_CONFIG.value, _TARGET.value, _MEM_FRACTION.value, attention=_ATTENTION.value,
                 programs=tuple(p for p in _PROGRAMS.value.split(",") if p))
    sys.exit(0 if report.fits else 3)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; no local accelerator is used
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<stage>.py:<preset>", lock_config=False)
    _TARGET = flags.DEFINE_string("target", "", "tpu:v5p-128, tpu:v5e-256, tpu:v6e-256, gpu:h100x8, ...; default: "
                                  "the preset's config.aot_target")
    _MEM_FRACTION = flags.DEFINE_float("mem_fraction", 0.95, "GPU: share of HBM the allocator may use "
                                       "(set XLA_PYTHON_CLIENT_MEM_FRACTION to the same value on the host)")
    _ATTENTION = flags.DEFINE_string("attention", "", "compile with this ModelConfig.attention (e.g. flash for a "
                                     "cudnn preset: cuDNN kernels need a GPU to compile)")
    _PROGRAMS = flags.DEFINE_string("programs", ",".join(PROGRAMS), "RL: which programs to compile (the update "
                                    "and the rollout engine's prefill and decode); the verdict covers those")
    flags.mark_flags_as_required(["config"])
    app.run(main)

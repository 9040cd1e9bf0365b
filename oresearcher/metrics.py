"""Training metrics: metrics.jsonl (flushed at every logged step), optional TensorBoard events, a progress bar, MFU.

    writer = MetricsWriter(workdir, total_steps, start_step=step)
    writer.write(step, {"loss": 1.2, "tokens_per_sec": 900.0, ...})   # one JSON line, flushed
    writer.advance(step)                                              # the progress bar
    writer.close()

    window = WindowMeans.empty()                        # clu.metrics: means over the steps since the last log
    window = window.merge(WindowMeans.single_from_model_output(loss=m["loss"], grad_norm=m["grad_norm"]))
    window.compute()                                    # {"loss": ..., "grad_norm": ...}

    flops = train_flops_per_token(model_cfg, seq_len)   # 6 N + attention, per trained token
    mfu = tokens_per_sec * flops / (num_devices * peak_flops_per_device(config_value))
    print(parameter_overview(model))                    # clu.parameter_overview's table of the parameters

    profiler = StepProfiler(workdir, config.profile)    # a JAX profiler trace of steps start_step.. (off: 0)
    profiler.before(step + 1); ...update...; profiler.after(step + 1, state)

TensorBoard events are written by tensorboardX when it is installed (or by torch's writer when the `tensorboard`
package is); TensorFlow is never required. A resumed run appends to the same metrics.jsonl
after dropping lines beyond the restored step, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

from clu import metrics as clu_metrics
from clu import parameter_overview as clu_parameter_overview

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L4": 121e12, "B200": 2250e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


# Means of the step metrics over a logging window: what is logged at step N summarises every step since the
# last log, not only step N (a noisy single-step loss hides the trend when log_every > 1). Built with
# Collection.create because this module's postponed annotations would hide the field types from clu.
WindowMeans = clu_metrics.Collection.create(loss=clu_metrics.Average.from_output("loss"),
                                            grad_norm=clu_metrics.Average.from_output("grad_norm"))


def parameter_overview(model) -> str:
    """The table of the model's parameters (name, shape, dtype, size; total count) printed when a run starts.
    No statistics: they would read every shard of a sharded model to the host."""
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return clu_parameter_overview.get_parameter_overview(params, include_stats=False)


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: 6 N for the matmul parameters (embedding lookups are not
    matmuls; the unembedding is) plus causal attention, 6 L H hd T (scores and values, fwd + bwd, half the
    T x T square)."""
    matmul_params = cfg.num_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
    attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params + attention


def measure_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one device on a float32 n x n matmul: the practical peak of a CPU (no data-sheet number)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def peak_flops_per_device(configured: float = 0.0) -> float:
    """`configured` if > 0; else the data-sheet peak of the device kind; else (CPU) a measured matmul peak."""
    if configured and configured > 0:
        return float(configured)
    import jax

    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return measure_matmul_peak()


class MetricsWriter:
    def __init__(self, workdir: str | Path, total_steps: int, start_step: int = 0, progress: bool = True):
        import jax

        # In a multi-host run every process computes the same global metrics; only the first one writes them.
        self.primary = jax.process_index() == 0
        from oresearcher import paths

        self.path = paths.path(workdir) / "metrics.jsonl"   # local, or a cloud URL (gs://bucket/run)
        self._tb, self._bar = None, None
        if not self.primary:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._tb = _tensorboard_writer(self.path.parent / "tensorboard")
        self._bar = None
        if progress:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, mininterval=1.0)

    def _truncate_after(self, step: int) -> None:
        """Keep only lines with step <= `step` (a resumed run rewrites what came after its checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if not self.primary:
            return
        from oresearcher import paths
        paths.append_text(self.path, json.dumps(row) + "\n")   # on disk at once: a killed run keeps its lines
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._bar is not None and "loss" in row:
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def echo(self, line: str) -> None:
        """Print a line (process 0 only) above the progress bar, so the bar stays whole."""
        if not self.primary:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, float) else v


def _tensorboard_writer(logdir: Path):
    if importlib.util.find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter
    elif importlib.util.find_spec("tensorboard") is not None and importlib.util.find_spec("torch") is not None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package, tensorboardX does not
    else:
        return None
    return SummaryWriter(str(logdir))


class StepProfiler:
    """A JAX profiler trace (TensorBoard's profile plugin reads it) of the steps start_step .. start_step +
    num_steps - 1 (1-based, as logged), written under workdir/profile; inert when either is 0 or the run resumes
    past them. Every process traces its own devices (one *.xplane.pb per host)."""

    def __init__(self, workdir: str | Path, profile_config=None):
        cfg = profile_config or {}
        self.first = int(cfg.get("start_step", 0) or 0)
        self.last = self.first + int(cfg.get("num_steps", 0) or 0) - 1
        from oresearcher import paths
        self.logdir = paths.path(workdir) / "profile"
        self.active = False

    def before(self, step: int) -> None:
        """Call before running the update that produces `step`."""
        if self.first > 0 and self.last >= self.first and step == self.first:
            import jax
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, outputs=None) -> None:
        """Call after the update that produced `step`; `outputs` (any pytree of arrays) are waited for, so the
        trace holds the device work of the last step and not only its dispatch."""
        if self.active and step >= self.last:
            import jax
            jax.block_until_ready(outputs)
            self.stop()
            print(f"profile: steps {self.first}-{self.last} traced to {self.logdir}", flush=True)

    def stop(self) -> None:
        """End a trace still running (a run stopped inside the traced steps); idempotent."""
        if self.active:
            import jax
            jax.profiler.stop_trace()
            self.active = False

"""Training throughput of the decoder vs PyTorch + transformers, on this machine, in one run.

    python -m experiments.bench.model_throughput                       # tiny and smollm2-135m, batch 4 x 512
    python -m experiments.bench.model_throughput --models=smollm2-135m --steps=3

For each model: one optimiser step = forward + backward + AdamW on a batch of random tokens, fp32 on both
sides, same shapes, same number of threads. Reports tokens/s, achieved FLOP/s and MFU, where the peak is the
best `jnp.dot` fp32 matmul rate measured here (so MFU says how close the model step comes to what XLA's matmuls
can do on this CPU, not to a datasheet number). Writes experiments/bench/results/model_throughput.json.

FLOPs per step = 3 x forward matmul FLOPs (backward = 2 x forward): per token, 2 x (every weight matrix,
lm_head included) + per layer 4 x T x H x hd for the two attention products (full T x T, as computed).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oresearcher.model import PRESETS, Decoder, ModelConfig, to_hf_config

RESULTS = Path(__file__).parent / "results"


def matmul_peak(seconds: float = 3.0) -> dict:
    """Best fp32 jnp.dot rate over a few square sizes (GFLOP/s)."""
    best = {}
    for n in (1024, 2048, 3072):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        dot = jax.jit(jnp.dot)
        dot(a, b).block_until_ready()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            dot(a, b).block_until_ready()
            reps += 1
        best[n] = 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
    return {"gflops": max(best.values()), "by_size": best}


def step_flops(cfg: ModelConfig, batch: int, seq: int) -> float:
    d, f, h, k, hd, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.vocab_size)
    per_token = cfg.num_layers * 2 * (d * hd * (2 * h + 2 * k) + 3 * d * f + 2 * seq * h * hd) + 2 * d * v
    return 3.0 * per_token * batch * seq


def bench_ours(cfg: ModelConfig, batch: int, seq: int, steps: int) -> dict:
    """One jitted step: loss, grads and the AdamW update, with model and optimiser state donated (updated in
    place, as a trainer runs it)."""
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    @functools.partial(nnx.jit, donate_argnums=(0, 1))
    def train_step(model, optimizer, inputs, targets):
        def loss_fn(model):
            logits = model(inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    t0 = time.perf_counter()
    float(train_step(model, optimizer, inputs, targets))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = float(train_step(model, optimizer, inputs, targets))
        times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times)), "first_step_s": compile_s, "loss": loss, "times": times}


def bench_torch(cfg: ModelConfig, batch: int, seq: int, steps: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in to_hf_config(cfg).items()
                                                  if k not in ("architectures", "torch_dtype", "dtype")})
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int64))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def train_step():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    train_step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = train_step()
        times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times)), "first_step_s": first, "loss": loss, "times": times,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention", default="dense,flash",
                        help="our attention implementations to time (ModelConfig.attention), comma-separated")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    peak = matmul_peak()
    print(f"measured jnp.dot fp32 peak: {peak['gflops']:.1f} GFLOP/s "
          f"({', '.join(f'{n}: {g:.1f}' for n, g in peak['by_size'].items())})")
    # other work on the machine skews every figure below: the load average is recorded with them
    print(f"load average before: {os.getloadavg()}")
    report = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "load_average_before": os.getloadavg(),
              "jax": jax.__version__, "batch": args.batch, "seq": args.seq, "peak": peak, "models": {}}
    for name in args.models.split(","):
        cfg = dataclasses.replace(PRESETS[name], param_dtype="float32", compute_dtype="float32", remat="none")
        flops = step_flops(cfg, args.batch, args.seq)
        tokens = args.batch * args.seq
        row = {"params": cfg.num_params, "step_gflop": flops / 1e9}
        for attention in args.attention.split(","):
            row[f"ours_{attention}"] = bench_ours(dataclasses.replace(cfg, attention=attention), args.batch,
                                                  args.seq, args.steps)
        if not args.no_torch:
            row["torch"] = bench_torch(cfg, args.batch, args.seq, args.steps)
        sides = [k for k in row if k.startswith("ours_")] + (["torch"] if "torch" in row else [])
        for side in sides:
            r = row[side]
            r["tokens_per_s"] = tokens / r["step_s"]
            r["gflops"] = flops / r["step_s"] / 1e9
            r["mfu_vs_measured_peak"] = r["gflops"] / peak["gflops"]
            print(f"{name:>14} {side:>12}: {r['tokens_per_s']:8.1f} tok/s  {r['gflops']:7.1f} GFLOP/s  "
                  f"MFU {100 * r['mfu_vs_measured_peak']:5.1f}%  (step {r['step_s']:.3f} s, "
                  f"first {r['first_step_s']:.1f} s, loss {r['loss']:.3f})")
        if "torch" in row:
            for side in sides[:-1]:
                row[f"{side}_over_torch"] = row[side]["tokens_per_s"] / row["torch"]["tokens_per_s"]
                print(f"{name:>14} {side} / torch tokens/s: {row[f'{side}_over_torch']:.2f}x")
        report["models"][name] = row
    report["load_average_after"] = os.getloadavg()
    print(f"load average after: {report['load_average_after']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "model_throughput.json"
    out.write_text(json.dumps(report, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()

"""SFT train-step throughput on CPU: tokens/s and MFU of oresearcher.sft's jitted step (forward, chunked loss,
backward, AdamW), against the measured float32 matmul peak of this machine.

    python experiments/bench/sft_throughput.py                       # all cases, results JSON in results/
    python experiments/bench/sft_throughput.py --cases=tiny --steps=10

Cases:
  tiny          the tests' model (2 layers, D 64, vocab 512), batch 1 x 2304, flash attention (configs/sft.py:tiny)
  qwen2-tunix   the side-by-side shape: Qwen2, vocab 32000, D 256, 4 layers, 4 heads / 2 KV, F 1024, batch 8 x 512
  smollm2       the embedded SmolLM2-135M-Instruct (GGUF), batch 1 x 1024

Each case runs with the loss chunks rematerialised (the default: memory flat in T) and kept (faster when the
logits fit). Batches are random tokens with a 40% loss mask (throughput does not depend on the values). MFU counts
6 N + attention FLOPs per token (oresearcher.metrics.train_flops_per_token); on CPU the "peak" is the best
time of a 1024^3 float32 matmul, so MFU here means "fraction of what this CPU does on a large matmul".
The step is built by `oresearcher.sft.make_train_step`, the same function the trainer uses, so other scripts
(e.g. a comparison against another trainer) can time exactly this step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from oresearcher import metrics, optim, sft, sharding  # noqa: E402
from oresearcher.model import PRESETS, Decoder, ModelConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"

QWEN2_TUNIX = ModelConfig(family="qwen2", vocab_size=32000, hidden_size=256, intermediate_size=1024, num_layers=4,
                          num_heads=4, num_kv_heads=2, head_dim=64, attention_bias=True, rms_norm_eps=1e-6,
                          rope_theta=1e6, tie_embeddings=False)


def _model(case: str):
    if case == "tiny":
        cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=512, attention="flash", attention_block=256)
        return Decoder(cfg, rngs=nnx.Rngs(0)), (1, 2304)
    if case == "qwen2-tunix":
        return Decoder(QWEN2_TUNIX, rngs=nnx.Rngs(0)), (8, 512)
    if case == "smollm2":
        from oresearcher.model import load_gguf
        return load_gguf()[0], (1, 1024)
    raise ValueError(f"unknown case {case!r}; cases: tiny, qwen2-tunix, smollm2")


def _optim_config() -> ConfigDict:
    return ConfigDict(dict(lr=1e-4, warmup_fraction=0.0, warmup_steps=1, final_lr_fraction=0.1, b1=0.9, b2=0.95,
                           eps=1e-8, weight_decay=0.0, grad_clip=0.0))


def bench(case: str, steps: int, peak: float, loss_remat: bool) -> dict:
    model, (b, t) = _model(case)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    sharding.shard_model(model, mesh)
    tx, schedule = optim.make_optimizer(_optim_config(), steps + 1)
    ts = sft.make_train_step(model, tx, schedule, mesh, loss_chunk=512, loss_remat=loss_remat,
                             batch_shape=(b, t))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.cfg.vocab_size, size=(b, t + 1)).astype(np.int32)
    batch = ts.put_batch({"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": rng.random((b, t)) < 0.4,
                          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
                          "segment_ids": np.ones((b, t), np.int32)})
    state = ts.state
    t0 = time.perf_counter()
    state, m = ts.step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = ts.step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tps = b * t / step_s
    flops = metrics.train_flops_per_token(model.cfg, t)
    row = {"case": case, "loss_remat": loss_remat, "batch": b, "seq_len": t, "params": model.cfg.num_params,
           "steps": steps,
           "compile_s": round(compile_s, 2), "step_s_median": round(step_s, 4), "tokens_per_sec": round(tps, 1),
           "train_flops_per_token": flops, "achieved_flops": tps * flops, "mfu_vs_matmul_peak": tps * flops / peak,
           "loss": float(m["loss"])}
    print(f"{case:12s} loss_remat={int(loss_remat)} batch {b}x{t}: {tps:8.0f} tokens/s  step {step_s * 1e3:7.1f} ms  "
          f"{tps * flops / 1e9:6.1f} GFLOP/s = {row['mfu_vs_matmul_peak']:.1%} of the matmul peak "
          f"(compile {compile_s:.1f}s)", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="tiny,qwen2-tunix,smollm2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--loss_remat", default="1,0", help="1: recompute loss-chunk logits in the backward; 0: keep")
    parser.add_argument("--out", default=str(RESULTS / "sft_throughput.json"))
    args = parser.parse_args()
    peak = metrics.measure_matmul_peak()
    print(f"measured float32 matmul peak (1 device): {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = [bench(c.strip(), args.steps, peak, bool(int(r))) for c in args.cases.split(",") if c.strip()
            for r in args.loss_remat.split(",")]
    out = {"device": jax.devices()[0].device_kind, "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "matmul_peak_flops": peak, "jax": jax.__version__, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    main()

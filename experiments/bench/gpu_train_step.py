"""One accelerator, one run: the SFT train step (forward + backward + AdamW) vs PyTorch + transformers.

    python -m experiments.bench.gpu_train_step                                  # smollm2-135m, 8 x 2048, bf16
    python -m experiments.bench.gpu_train_step --model=qwen2.5-0.5b --batch=4 --seq=4096

Ours is `oresearcher.sft.train_step_fn` itself (chunked masked loss, AdamW via optax, state donated), with fp32
parameters and bf16 compute. The peer is transformers' model of the same config on the same device: fp32
parameters, `torch.autocast(bfloat16)`, SDPA attention, fused AdamW. Same random batch, same step count; the
two alternate (ours, peer, ours, peer) so drift hits both. MFU is against the device's datasheet dense bf16 peak
(H100 SXM: 989 TFLOP/s), counting 3 x forward matmul FLOPs (attention products included, causal not halved).
Writes experiments/bench/results/gpu_train_step.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oresearcher import sft
from oresearcher.extras import require
from oresearcher.model import PRESETS, Decoder, to_hf_config

RESULTS = Path(__file__).parent / "results"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def step_flops(cfg, batch: int, seq: int) -> float:
    d, f, h, k, hd, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.vocab_size)
    per_token = cfg.num_layers * 2 * (d * hd * (2 * h + 2 * k) + 3 * d * f + 2 * seq * h * hd) + 2 * d * v
    return 3.0 * per_token * batch * seq


def random_batch(vocab: int, batch: int, seq: int) -> dict:
    ids = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1), dtype=np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((batch, seq), np.float32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "segment_ids": np.ones((batch, seq), np.int32)}


def ours(cfg, batch_np: dict):
    """-> a function running one step (returns the loss as a float, which waits for the device)."""
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    schedule = optax.constant_schedule(1e-4)
    tx = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.0)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    step = jax.jit(sft.train_step_fn(graphdef, tx, schedule, grad_accum=1, loss_chunk=1024, loss_remat=True),
                   donate_argnums=0)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    box = [state]

    def run() -> float:
        box[0], metrics = step(box[0], batch)
        return float(metrics["loss"])
    return run


def peer(cfg, batch_np: dict):
    torch = require("torch", "dev")
    import transformers

    torch.manual_seed(0)
    hf = transformers.AutoConfig.for_model(**{k: v for k, v in to_hf_config(cfg).items()
                                              if k not in ("architectures", "torch_dtype", "dtype")})
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.float32, attn_implementation="sdpa")
    dev = "cuda" if torch.cuda.is_available() else "cpu"      # cpu: a smoke run of the script only
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=dev == "cuda")
    ids = torch.from_numpy(batch_np["input_ids"].astype(np.int64)).to(dev)
    targets = torch.from_numpy(batch_np["targets"].astype(np.int64)).to(dev)

    def run() -> float:
        with torch.autocast(dev, dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", default="dense", help="dense | flash | cudnn")
    parser.add_argument("--out", default=str(RESULTS / "gpu_train_step.json"))
    args = parser.parse_args()

    cfg = dataclasses.replace(PRESETS[args.model], param_dtype="float32", compute_dtype="bfloat16",
                              remat=args.remat, attention=args.attention)
    batch = random_batch(cfg.vocab_size, args.batch, args.seq)
    runners = {"ours": ours(cfg, batch), "torch": peer(cfg, batch)}
    first = {}
    for name, run in runners.items():                       # compile / warm up, then discard
        t0 = time.perf_counter()
        run(), run()
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in runners}
    losses = {}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                losses[name] = run()
            times[name].append((time.perf_counter() - t0) / args.steps)
    device = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    flops = step_flops(cfg, args.batch, args.seq)
    report = {"device": device, "model": args.model, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "rounds": args.rounds, "remat": args.remat, "attention": args.attention, "jax": jax.__version__,
              "step_flops": flops, "peak_bf16_flops": peak, "warmup_s": first}
    for name in runners:
        step_s = float(np.median(times[name]))
        report[name] = {"step_s": step_s, "times": times[name], "tokens_per_s": args.batch * args.seq / step_s,
                        "mfu": flops / step_s / peak if peak else None, "loss": losses[name]}
    torch = require("torch", "dev")
    report["torch_version"] = torch.__version__
    report["ours_over_torch"] = report["ours"]["tokens_per_s"] / report["torch"]["tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for name in runners:
        r = report[name]
        mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] else ""
        print(f"{name:6s} {r['tokens_per_s']:10.0f} tok/s  step {r['step_s'] * 1e3:7.1f} ms{mfu}  loss {r['loss']:.3f}")
    print(f"ours_over_torch={report['ours_over_torch']:.2f}  ({device}, {args.model}, {args.batch} x {args.seq})")


if __name__ == "__main__":
    main()

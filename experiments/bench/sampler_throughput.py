"""Sampler decode throughput for the embedded SmolLM2-135M on CPU, side by side with transformers' `generate`
in the same process (same weights: transformers dequantises the same GGUF).

    python -m experiments.bench.sampler_throughput [--batches 1,8,32] [--new 128] [--repeats 2] [--session-len N]

Both sides generate exactly `--new` tokens greedily per row (EOS disabled) from the same chat prompt; tokens/s =
batch x new / wall seconds of the whole call (prefill included, compile excluded: each shape is run once first).
The repetitions interleave (ours, transformers, ours, ...) so other load on the machine hits both alike; medians
are compared and the load average is recorded with every repetition (on a shared machine the absolute figures
move, the ratios much less: re-run on an idle machine for figures to quote).
On an idle machine the default run takes a few minutes. On an oversubscribed one (load average well above the
core count) torch's OpenMP worker threads wait on each other at every small op of a decode step and `generate`
slows down far more than XLA does, so the ratio there overstates ours: quote figures from an idle machine.
`--session-len N` sizes our sessions for N tokens (as a rollout sized for a long episode does; transformers' cache
grows as it goes, so it has no such size): our cache holds only the slots the rows reach and grows with them, so
the figures should not move with N (the run also times ours at the default session size, interleaved).
Each batch also times the decode step's weight products alone, in the sampler's own weight layout and chained as
in a step (experiments/bench/decode_floor.py): a step cannot take less, so `floor_over_transformers` is the
largest ratio within reach for the sampler's layout (on CPU the cpu_kernels matmul where it is built).
Targets: >= 2x transformers at batch 1, >= 3x at batch 8. Writes experiments/bench/results/sampler_throughput.json
(sampler_throughput_session{N}.json with --session-len).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--session-len", type=int, default=None,
                        help="our sessions' max_len (default: prompt + new tokens)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import jax

    from oresearcher.extras import require
    torch = require("torch", "dev")
    import transformers

    from experiments.bench.decode_floor import weight_products
    from oresearcher.model import load_gguf
    from oresearcher.model.gguf_io import embedded_gguf_path
    from oresearcher.sampler import Sampler, SamplingParams

    load_before = os.getloadavg()
    model, tokenizer = load_gguf()
    path = embedded_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    prompt = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain in detail how a steam engine works and why it mattered."}],
        add_generation_prompt=True))
    sampler = Sampler(model, tokenizer, eos_ids=())
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new, stop=())

    rows = []
    for b in batches:
        prompts = [prompt] * b
        sampler.generate(prompts, params, args.session_len)     # compile this shape
        ids = torch.tensor(prompts)
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.new, min_new_tokens=args.new,
                  do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_id)
        with torch.no_grad():
            hf.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})   # warm up
        ours, theirs, loads, ours_default = [], [], [], []
        if args.session_len:
            sampler.generate(prompts, params)                   # and the default session's shape
        for _ in range(args.repeats):
            t = time.perf_counter()
            outs = sampler.generate(prompts, params, args.session_len)
            ours.append(time.perf_counter() - t)
            assert all(len(o.tokens) == args.new for o in outs)
            if args.session_len:
                t = time.perf_counter()
                sampler.generate(prompts, params)
                ours_default.append(time.perf_counter() - t)
            with torch.no_grad():
                t = time.perf_counter()
                hf_out = hf.generate(ids, **kw)
                theirs.append(time.perf_counter() - t)
            assert hf_out.shape[1] == ids.shape[1] + args.new
            loads.append(os.getloadavg())
        # the same computation on both sides: how far their greedy tokens agree (fp32 rounding may split them late)
        theirs_tokens = hf_out[0, len(prompt):].tolist()
        agree = next((i for i, (a, c) in enumerate(zip(outs[0].tokens, theirs_tokens)) if a != c), args.new)
        row = {"batch": b, "new_tokens": args.new, "prompt_tokens": len(prompt), "session_len": args.session_len,
               "ours_tok_s": b * args.new / statistics.median(ours),
               "transformers_tok_s": b * args.new / statistics.median(theirs),
               "ours_s": ours, "transformers_s": theirs, "load_average": loads,
               "greedy_tokens_equal_for": agree}
        row["speedup"] = row["ours_tok_s"] / row["transformers_tok_s"]
        # the most a sampler of this model in this weight layout could reach here: its weight products alone
        row["weight_products_floor"] = floor = weight_products(sampler, b)
        row["floor_over_transformers"] = floor["floor_tokens_per_s"] / row["transformers_tok_s"]
        if ours_default:
            row["ours_default_session_s"] = ours_default
            row["ours_default_session_tok_s"] = b * args.new / statistics.median(ours_default)
            print(f"batch {b:>3}: ours with a {args.session_len}-token session {row['ours_tok_s']:.1f} tok/s, with "
                  f"the default session ({len(prompt) + args.new} tokens) {row['ours_default_session_tok_s']:.1f}")
        rows.append(row)
        print(f"batch {b:>3}: ours {row['ours_tok_s']:8.1f} tok/s | transformers {row['transformers_tok_s']:8.1f} "
              f"tok/s | {row['speedup']:.2f}x (load {loads[-1][0]:.1f}) | weight products alone "
              f"{floor['floor_tokens_per_s']:.1f} tok/s = {row['floor_over_transformers']:.2f}x transformers "
              f"({floor['weights_mb']:.0f} MB at {floor['implied_gb_s']:.1f} GB/s) | greedy tokens equal to "
              f"transformers' for the first {agree} of {args.new}", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "sampler_throughput", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, fp32)",
           "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "weight_layout": sampler.weight_layout,
           "targets": {"1": 2.0, "8": 3.0}, "rows": rows,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "note": "medians of interleaved repetitions; a shared machine: re-run idle for figures to quote"}
    name = f"sampler_throughput{'' if args.session_len is None else f'_session{args.session_len}'}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    for row in rows:
        target = out["targets"].get(str(row["batch"]))
        if target:
            print(f"batch {row['batch']}: {row['speedup']:.2f}x transformers (target >= {target}x: "
                  f"{'met' if row['speedup'] >= target else 'NOT met'})")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    main()

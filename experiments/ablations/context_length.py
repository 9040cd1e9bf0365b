"""Context-length ablation: what a context window of L tokens keeps of the synthesized trajectories.

    python -m experiments.ablations.context_length [--limit N] [--steps 10,20] [--lengths 1024,...,65536]

The paper trains at 32k / 64k / 128k tokens and finds 32k -> 64k helps a lot, 64k -> 128k plateaus (PAPER §5):
a trajectory longer than the window is cut, and what is cut is its end: the last subtasks and the final report
that the student must learn to write. Offline, with no model to train, we measure exactly that cost on the
embedded synthesizer's trajectories (extractive teacher, one job per research-step budget), tokenized with the
embedded SmolLM2 tokenizer, chat template included, for each window L:
  * fits        share of trajectories that fit whole (nothing cut);
  * report_kept share whose final report (through </suggested_answer>) lies inside the window;
  * kpr         lexical key-point recall of the report text that survives the cut (0-100), against the
                embedded set's gold key points: what the student still sees of a good answer.
Writes experiments/ablations/results/context_length.{json,png}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from experiments.ablations.record import write_result
from experiments.eval import embedded
from experiments.eval.kpr import LexicalKeyPoints, kpr_report
from oresearcher import protocol

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


def window_stats(records: list[tuple[dict, list[int], str, int]], length: int, tokenizer) -> dict:
    """records: (question row, token ids of the rendered example, assistant text, char offset of the
    assistant text in the rendered example). Returns fits, report_kept (0-1) and kpr (0-100) at `length`."""
    fits = kept = 0
    kprs = []
    judge = LexicalKeyPoints()
    for q, ids, assistant, offset in records:
        if len(ids) <= length:
            fits += 1
            visible = assistant
        else:
            visible = tokenizer.decode(ids[:length])[offset:]
        report = protocol.extract_report(visible) if "</suggested_answer>" in visible else None
        if report is None and "<suggested_answer>" in visible:   # the report is cut part way
            report = visible.split("<suggested_answer>")[-1]
        kept += "</suggested_answer>" in visible
        kprs.append(asyncio.run(kpr_report(report or "", [k["text"] for k in q["key_points"]], judge))["kpr"])
    n = len(records) or 1
    return {"fits": fits / n, "report_kept": kept / n, "kpr": 100 * sum(kprs) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, help="only the first N questions of the embedded set")
    ap.add_argument("--steps", default="10,20", help="research-step budgets whose trajectories are measured")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--synth-config", default="configs/synth.py:embedded")
    args = ap.parse_args(argv)
    from oresearcher.model import load_gguf

    questions = [json.loads(line) for line in embedded.QUESTIONS.read_text(encoding="utf-8").splitlines()]
    questions = questions[:args.limit] if args.limit else questions
    lengths = [int(x) for x in args.lengths.split(",")]
    _, tokenizer = load_gguf()
    system = protocol.system_prompt()
    workdir = Path(tempfile.mkdtemp(prefix="ablation-context-"))
    rows, t0 = [], time.perf_counter()
    for steps in [int(s) for s in args.steps.split(",")]:
        texts = embedded.teacher_texts(questions, synth_config=args.synth_config, cache_dir=workdir / "cache",
                                       step_budget=steps)
        records = []
        for q in questions:
            if q["id"] not in texts:
                continue
            prefix = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                    {"role": "user", "content": q["prompt"]}],
                                                   add_generation_prompt=True)
            ids = tokenizer.encode(prefix + texts[q["id"]])
            records.append((q, ids, texts[q["id"]], len(prefix)))
        sizes = sorted(len(r[1]) for r in records)
        for length in lengths:
            rows.append({"steps": steps, "context": length, "trajectories": len(records),
                         "median_tokens": sizes[len(sizes) // 2] if sizes else None,
                         **window_stats(records, length, tokenizer)})

    def plot(ax):
        for steps in sorted({r["steps"] for r in rows}):
            pts = [r for r in rows if r["steps"] == steps]
            ax.plot([r["context"] for r in pts], [100 * r["report_kept"] for r in pts], "o-",
                    label=f"report kept, {steps} steps")
            ax.plot([r["context"] for r in pts], [r["kpr"] for r in pts], "s--",
                    label=f"KPR of kept text, {steps} steps")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context window (tokens)")
        ax.set_ylabel("% of trajectories / KPR (0-100)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    paths = write_result("context_length", {
        "title": "Context length: what a window of L tokens keeps of synthesized trajectories",
        "description": "Embedded synthesizer (extractive teacher), SmolLM2 tokenizer with chat template; "
                       "fits / report_kept are shares (0-1), kpr is lexical key-point recall of the report "
                       "text inside the window (0-100).",
        "command": "python -m experiments.ablations.context_length " + " ".join(argv or sys.argv[1:]),
        "rows": rows, "summary": {"questions": len(questions), "seconds": round(time.perf_counter() - t0, 1)}},
        plot)
    for r in rows:
        print(f"steps={r['steps']:>2} L={r['context']:>6}: fits {r['fits']:.2f}  report kept {r['report_kept']:.2f}  "
              f"KPR {r['kpr']:.1f}  (median {r['median_tokens']} tokens)")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

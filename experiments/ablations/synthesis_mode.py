"""Synthesis-mode ablation: parallel researchers vs one sequential context (PAPER §2: with GPT-5 as the agent,
sequential 42.92 -> parallel 49.60 RACE overall).

    python -m experiments.ablations.synthesis_mode [--limit N]

One synthesis job per mode on the synth service (embedded preset), the 30 questions of the embedded evaluation
set; reports scored as in `experiments.eval.embedded` (heuristic judge and its four dimensions, lexical KPR),
plus tool calls per trajectory and the job's wall time. With the LLM-free extractive teacher the two modes see
the same evidence, so expect small quality differences here; the paper's gap comes from LLM researchers whose
context fills up in sequential mode. Point --synth-config at an LLM preset to measure that.
Writes experiments/ablations/results/synthesis_mode.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from experiments.ablations.record import write_result
from experiments.eval import embedded

MODES = ("parallel", "sequential")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, help="only the first N questions of the embedded set")
    ap.add_argument("--synth-url", help="a running synth service for judging (default: served in process)")
    ap.add_argument("--synth-config", default="configs/synth.py:embedded")
    args = ap.parse_args(argv)
    questions = [json.loads(line) for line in embedded.QUESTIONS.read_text(encoding="utf-8").splitlines()]
    questions = questions[:args.limit] if args.limit else questions
    workdir = Path(tempfile.mkdtemp(prefix="ablation-mode-"))
    proc = embedded.InProcessTools(workdir / "cache") if not args.synth_url else None
    url = args.synth_url or proc.url
    rows = []
    try:
        for mode in MODES:
            t0 = time.perf_counter()
            texts = embedded.teacher_texts(questions, synth_config=args.synth_config,
                                           cache_dir=workdir / f"cache-{mode}", mode=mode)
            wall = time.perf_counter() - t0
            rows.append({"mode": mode, **embedded.score_system(url, questions, texts)["row"],
                         "wall_s": round(wall, 2)})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    keys = ("judge", "comprehensiveness", "insight", "instruction_following", "readability", "kpr")

    def plot(ax):
        width = 0.38
        for i, r in enumerate(rows):
            xs = [k + (i - 0.5) * width for k in range(len(keys))]
            ax.bar(xs, [r[k] if r[k] is not None else 0 for k in keys], width, label=r["mode"])
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(["judge", "compr.", "insight", "instr.", "read.", "KPR"], fontsize=8)
        ax.set_ylabel("score (0-100)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")

    paths = write_result("synthesis_mode", {
        "title": "Synthesis mode: parallel researchers vs sequential single context",
        "description": "Extractive teacher on the embedded set; heuristic judge (offline stand-in for the LLM "
                       "judge) and lexical KPR, 0-100; tool_calls per trajectory; wall_s per job, each with a "
                       "tool cache of its own (the first job also loads the corpus and search index).",
        "command": "python -m experiments.ablations.synthesis_mode " + " ".join(argv or sys.argv[1:]),
        "rows": rows, "summary": {"questions": len(questions)}}, plot)
    for r in rows:
        print(f"{r['mode']:>10}: judge {embedded.fmt(r['judge'])}  KPR {embedded.fmt(r['kpr'])}  "
              f"tool calls {r['tool_calls']:.1f}  reports {r['reports']}/{r['questions']}  {r['wall_s']:.1f}s")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

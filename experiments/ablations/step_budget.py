"""Research-step budget ablation: 5 / 10 / 20 steps per sub-query (PAPER §2: 48.80 / 49.61 / 50.76 RACE).

    python -m experiments.ablations.step_budget [--limit N] [--budgets 5,10,20]

One synthesis job per budget on the synth service (embedded preset: extractive teacher, local corpus), the same
30 questions of the embedded evaluation set; each report scored as in `experiments.eval.embedded` (heuristic
judge, lexical KPR/KPC), plus tool calls per trajectory and wall time. On the embedded setup the teacher has no
LLM, so the figures show what more research steps buy in gathered evidence, not in writing quality.
Writes experiments/ablations/results/step_budget.{json,png}.
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

BUDGETS = (5, 10, 20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, help="only the first N questions of the embedded set")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--synth-url", help="a running synth service for judging (default: served in process)")
    ap.add_argument("--synth-config", default="configs/synth.py:embedded")
    args = ap.parse_args(argv)
    questions = [json.loads(line) for line in embedded.QUESTIONS.read_text(encoding="utf-8").splitlines()]
    questions = questions[:args.limit] if args.limit else questions
    workdir = Path(tempfile.mkdtemp(prefix="ablation-steps-"))
    proc = embedded.InProcessTools(workdir / "cache") if not args.synth_url else None
    url = args.synth_url or proc.url
    rows = []
    try:
        for steps in [int(s) for s in args.budgets.split(",")]:
            t0 = time.perf_counter()
            texts = embedded.teacher_texts(questions, synth_config=args.synth_config,
                                           cache_dir=workdir / f"cache-{steps}", step_budget=steps)
            wall = time.perf_counter() - t0
            row = embedded.score_system(url, questions, texts)["row"]
            rows.append({"steps": steps, **row, "wall_s": round(wall, 2)})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    def plot(ax):
        xs = [r["steps"] for r in rows]
        for key, label in (("judge", "heuristic judge"), ("comprehensiveness", "comprehensiveness"),
                           ("insight", "insight"), ("kpr", "KPR")):
            ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in rows], "o-", label=label)
        ax.set_xticks(xs)
        ax.set_xlabel("research steps per sub-query")
        ax.set_ylabel("score (0-100)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    paths = write_result("step_budget", {
        "title": "Research-step budget per sub-query (5 / 10 / 20)",
        "description": "Extractive teacher on the embedded set; heuristic judge (offline stand-in for the LLM "
                       "judge) and lexical KPR, 0-100; tool_calls per trajectory; wall_s per job, each with a "
                       "tool cache of its own (the first job also loads the corpus and search index).",
        "command": "python -m experiments.ablations.step_budget " + " ".join(argv or sys.argv[1:]),
        "rows": rows, "summary": {"questions": len(questions)}}, plot)
    for r in rows:
        print(f"steps={r['steps']:>2}: judge {embedded.fmt(r['judge'])}  KPR {embedded.fmt(r['kpr'])}  "
              f"tool calls {r['tool_calls']:.1f}  reports {r['reports']}/{r['questions']}  {r['wall_s']:.1f}s")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

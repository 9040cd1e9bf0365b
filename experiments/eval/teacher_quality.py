"""Is the embedded teacher worth imitating? Three figures, offline, in about two minutes on 2 CPU cores.

    python -m experiments.eval.teacher_quality [--label after] [--questions 25] [--seed 0]

On `--questions` unseen questions (synth.questions.corpus_questions(n, seed) with every evaluation set under
experiments/data excluded: the same generator that makes seed questions, so the pick is reproducible and none is
an evaluation question), each synthesized through the whole funnel of configs/synth.py:embedded (3 candidates,
the heuristic judge picks one):
  * off_topic_subtasks  subtasks about something the question does not ask: the subtask's content words, once
                        any copy of the question inside it and the generic aspect words (ASPECT_WORDS) are taken
                        out, share none with the question's (a subtask that is only aspect words is on topic);
  * on_topic_results    share of the search results shown in the trajectories' observations whose title shares
                        a content word with the question;
  * tool calls, N = min(#web_search, #crawl_page), R_tool (oresearcher.protocol, the reward's band) and the
    heuristic judge's overall score (0-100) of the accepted trajectories.
On the 30 questions of experiments/data/embedded_eval.jsonl: the teacher's KPR (lexical key-point recall, 0-100),
computed exactly as `python -m experiments.eval.embedded --systems teacher` computes its `kpr` column (one
candidate per question, the workflow of the same config).
`--records FILE` re-scores saved records (an older teacher's, on the same questions) with this checkout's judge:
how much a judge notices what the teacher gets wrong. Words are compared after a light plural fold
("mosquitoes" ~ "mosquito", synth.text.fold). The row goes to
experiments/eval/results/teacher_quality.json under `--label` (rows with other labels are kept, so a before and
an after sit side by side; render with `python -m experiments.results`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from oresearcher import protocol
from synth import text as text_lib

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "teacher_quality.json"
EVAL_SET = HERE.parent / "data" / "embedded_eval.jsonl"
# Words that say which aspect a subtask asks about, not what it is about.
ASPECT_WORDS = frozenset("""
defining features feature causes cause consequences consequence significance key facts figures reported answer
answers question bear bears role roles origin origins history historical development developed develop effects
effect impact impacts compare compared comparison differ differs difference differences alike similar
similarities relationship related connected connection reveal reveals understanding explain explained define
main important importance overview context background examples example kinds types type work works known
""".split())
_HIT_TITLE = re.compile(r"^\d+\.\s*\[(.*?)\]\(", re.MULTILINE)


def words(text: str) -> set[str]:
    return {text_lib.fold(w) for w in text_lib.content_words(text)}


def off_topic(subtask: str, question: str) -> bool:
    focus = " ".join(question.split()).rstrip("?.!").lower()
    own = " ".join(subtask.split()).lower().replace(focus, " ")
    rest = words(own) - {text_lib.fold(w) for w in ASPECT_WORDS}
    return bool(rest) and not rest & words(question)


def search_titles(text: str) -> list[str]:
    """The result titles of every web_search observation of a trajectory."""
    spans = [s for s in protocol.parse(text) if s.tag is not None]
    titles = []
    for before, span in zip(spans, spans[1:]):
        if before.tag == "web_search" and span.tag == "observation":
            titles += _HIT_TITLE.findall(span.body)
    return titles


def unseen_questions(n: int, seed: int) -> list[dict]:
    from synth.questions import corpus_questions, evaluation_sets
    return corpus_questions(n, seed=seed, exclude=evaluation_sets())


async def funnel_records(questions: list[dict], cache: Path) -> list[dict]:
    from synth.config import load_config
    from synth.funnel import Synthesizer

    cfg = load_config("configs/synth.py:embedded")
    cfg.tools.cache_dir = str(cache)
    synth = Synthesizer.from_config(cfg)
    try:
        outcomes = await asyncio.gather(*(synth.synthesize(q["question"], q["id"]) for q in questions))
    finally:
        await synth.aclose()
    return [{"question": q, "record": o.record, "rejections": o.rejections} for q, o in zip(questions, outcomes)]


async def rejudged(path: Path, cache: Path) -> list[dict]:
    """Saved records, each re-scored by this checkout's funnel judge (synth.selection.score_candidate with the
    heuristic judge), as funnel_records gives them."""
    from synth.judge import HeuristicJudge
    from synth.selection import score_candidate
    from synth.tools import Tools

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tools = Tools.from_config({"cache_dir": str(cache), "search": {"backend": "local"}, "crawl": {"backend": "local"}})
    judge = HeuristicJudge(tools)
    try:
        for record in records:
            verdict = await score_candidate(judge, record["question"], record["report"],
                                            record["messages"][-1]["content"])
            record["meta"]["judge"] = verdict.to_json()
    finally:
        await tools.aclose()
    return [{"question": {"id": r["id"], "question": r["question"]}, "record": r, "rejections": []} for r in records]


def unseen_figures(rows: list[dict]) -> tuple[dict, list[dict]]:
    subtasks = off = titles = on = calls = 0
    n_values, r_tools, judges, per_q = [], [], [], []
    for row in rows:
        question, record = row["question"]["question"], row["record"]
        if record is None:
            per_q.append({"id": row["question"]["id"], "question": question, "accepted": False,
                          "rejections": row["rejections"][:6]})
            continue
        text = record["messages"][-1]["content"]
        subs = [s for s in protocol.parse(text) if s.tag == "subtask"]
        bad = [s.body.strip() for s in subs if off_topic(s.body, question)]
        hit_titles = search_titles(text)
        good = [t for t in hit_titles if words(t) & words(question)]
        counts = protocol.count_tool_calls(text)
        subtasks, off = subtasks + len(subs), off + len(bad)
        titles, on = titles + len(hit_titles), on + len(good)
        calls += sum(counts.values())
        n_values.append(protocol.tool_n(text))
        r_tools.append(protocol.tool_reward(text))
        judges.append(100 * record["meta"]["judge"]["overall"])
        per_q.append({"id": row["question"]["id"], "question": question, "accepted": True,
                      "subtasks": [s.body.strip() for s in subs], "off_topic": bad,
                      "on_topic_results": f"{len(good)}/{len(hit_titles)}", "N": n_values[-1],
                      "r_tool": r_tools[-1]})
    accepted = len(n_values)
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return {"questions": len(rows), "accepted": accepted, "subtasks": subtasks, "off_topic_subtasks": off,
            "on_topic_results": round(100 * on / titles, 1) if titles else None,
            "tool_calls": round(calls / accepted, 2) if accepted else None,
            "N_mean": mean(n_values), "N_min": min(n_values, default=None), "N_max": max(n_values, default=None),
            "r_tool": mean(r_tools), "judge": mean(judges)}, per_q


def eval_kpr(cache: Path) -> float:
    """The teacher row's KPR of experiments.eval.embedded (same workflow, same scoring)."""
    from experiments.eval.embedded import teacher_texts
    from experiments.eval.kpr import LexicalKeyPoints, kpr_report

    rows = [json.loads(line) for line in EVAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = teacher_texts(rows, synth_config="configs/synth.py:embedded", cache_dir=cache)
    lexical, total = LexicalKeyPoints(), 0.0
    for row in rows:
        report = protocol.extract_report(texts.get(row["id"], "")) or ""
        total += asyncio.run(kpr_report(report, [k["text"] for k in row["key_points"]], lexical))["kpr"]
    return 100 * total / len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="current", help="the row's name in the results file (e.g. before, after)")
    ap.add_argument("--note", default="", help="what the row measured (kept in the results file)")
    ap.add_argument("--questions", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", type=Path, help="score these trajectory records (a synth run's trajectories.jsonl, "
                    "e.g. an older teacher's on the same questions) with this checkout's judge, instead of "
                    "synthesizing; no eval_kpr")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")   # the eval helpers import JAX; nothing here needs a device
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="teacher-quality-") as tmp:
        if args.records:
            rows = asyncio.run(rejudged(args.records, Path(tmp) / "cache"))
            figures, per_q = unseen_figures(rows)
            figures["eval_kpr"] = None
        else:
            rows = asyncio.run(funnel_records(unseen_questions(args.questions, args.seed), Path(tmp) / "cache"))
            figures, per_q = unseen_figures(rows)
            figures["eval_kpr"] = round(eval_kpr(Path(tmp) / "cache"), 2)
    figures = {"label": args.label, **figures, "seconds": round(time.perf_counter() - start, 1),
               **({"note": args.note} if args.note else {})}
    for key in ("N_mean", "r_tool", "judge"):
        figures[key] = None if figures[key] is None else round(figures[key], 3)
    print(json.dumps(figures, indent=1))
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = [r for r in old.get("rows", []) if r.get("label") != args.label]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "title": "Embedded teacher quality: on-topic plans and searches, the reward's band, KPR",
        "description": f"{args.questions} unseen questions (synth.questions.corpus_questions(n, seed={args.seed}), "
                       "evaluation sets excluded) through the embedded funnel: off-topic subtasks, share of search "
                       "results whose title shares a content word with the question (%), tool calls, N = "
                       "min(#web_search, #crawl_page), R_tool, heuristic judge (0-100); eval_kpr: the teacher's "
                       "lexical KPR on the 30 embedded evaluation questions (0-100).",
        "command": "python -m experiments.eval.teacher_quality --label LABEL",
        "device": f"CPU ({os.cpu_count()} cores)",
        "rows": kept + [figures],
        "per_question": {**old.get("per_question", {}), args.label: per_q}}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

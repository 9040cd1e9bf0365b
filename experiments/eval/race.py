"""RACE (DeepResearch Bench): reference-based, criteria-weighted report quality, over any OpenAI-compatible judge.

For each task the judge sees the task prompt, the target report (article 1), a reference report (article 2)
and the task's criteria, grouped in four dimensions. It scores both reports criterion by criterion on 0-10.

    dimension score  s_d = sum_c w_c * score_c / sum_c w_c           (criterion weights w_c within dimension d)
    report total     S   = sum_d W_d * s_d                            (dimension weights W_d of the task)
    task score           = S_target / (S_target + S_reference)        (0.5 = as good as the reference)
    dimension result     = s_d,target / (s_d,target + s_d,reference)

The benchmark's overall figure is the mean task score over scored tasks, times 100. A task whose judge call
fails after every retry (no JSON, a missing criterion, a score outside 0..10, an endpoint error) is
dropped and counted; it is never scored 0. Zero totals on both sides (0/0) also drop the task.

Accepted files (JSONL, one object per line), matched to tasks by `id`, else by exact `prompt` text as the
benchmark itself does:
  tasks       {id, prompt, topic?, language?}                      (the benchmark's query.jsonl)
  targets     {id, prompt, article}                                (our output rows)
  references  {id, prompt, article}                                (the benchmark's reference.jsonl)
  criteria    {id?, prompt, dimension_weight: {dim: W},             (the benchmark's criteria.jsonl; optional:
               criterions: {dim: [{criterion, explanation, weight}]}} without it the judge writes criteria)
Dimensions: comprehensiveness, insight, instruction_following, readability.

    python -m experiments.eval.race --tasks query.jsonl --targets ours.jsonl --references reference.jsonl \
        [--criteria criteria.jsonl] --judge-url http://host:port/v1 --judge-model NAME --out results/race.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.eval.judge import Judge, JudgeError, JudgeFailure
from experiments.run_agent import read_jsonl

DIMENSIONS = ("comprehensiveness", "insight", "instruction_following", "readability")


# ----------------------------------------------------------------------------------------------- criteria
@dataclass(frozen=True)
class Criterion:
    text: str
    explanation: str
    weight: float


@dataclass(frozen=True)
class TaskCriteria:
    """Dimension weights W_d (sum 1) and, per dimension, weighted criteria."""
    dimension_weight: dict[str, float]
    criteria: dict[str, tuple[Criterion, ...]]


def parse_criteria(row: dict, where: str) -> TaskCriteria:
    """One criteria row in the benchmark's layout; raises ValueError naming `where` and the bad field."""
    dw = row.get("dimension_weight")
    crit = row.get("criterions", row.get("criteria"))
    if not isinstance(dw, dict) or not isinstance(crit, dict):
        raise ValueError(f"{where}: needs 'dimension_weight' {{dim: weight}} and 'criterions' {{dim: [...]}}")
    weights, criteria = {}, {}
    for dim in DIMENSIONS:
        try:
            weights[dim] = float(dw[dim])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: dimension_weight[{dim!r}] missing or not a number") from None
        items = crit.get(dim)
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}: criterions[{dim!r}] must be a non-empty list")
        parsed = []
        for k, c in enumerate(items):
            try:
                parsed.append(Criterion(str(c["criterion"]), str(c.get("explanation", "")), float(c["weight"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: criterions[{dim!r}][{k}] needs 'criterion' and a numeric 'weight'") \
                    from None
            if parsed[-1].weight < 0:
                raise ValueError(f"{where}: criterions[{dim!r}][{k}] has a negative weight")
        if sum(c.weight for c in parsed) <= 0:
            raise ValueError(f"{where}: criterions[{dim!r}] weights sum to 0")
        criteria[dim] = tuple(parsed)
    if sum(weights.values()) <= 0 or min(weights.values()) < 0:
        raise ValueError(f"{where}: dimension weights must be >= 0 and not all 0")
    return TaskCriteria(weights, criteria)


class ByTask:
    """Rows of a file looked up by task id, else by exact prompt text (the benchmark keys by prompt)."""

    def __init__(self, rows: list[dict]):
        self.by_id = {str(r["id"]): r for r in rows if "id" in r}
        self.by_prompt = {r["prompt"]: r for r in rows if isinstance(r.get("prompt"), str)}

    def get(self, task: dict) -> dict | None:
        return self.by_id.get(str(task.get("id"))) or self.by_prompt.get(task.get("prompt"))


CRITERIA_PROMPT = """You design the grading rubric for a research report written in answer to the task below.
Give weights to four dimensions (they must sum to 1): comprehensiveness (breadth and depth of coverage),
insight (analysis, causes, implications, original judgement), instruction_following (does the report do
exactly what the task asks), readability (structure, clarity, presentation). For each dimension write 3 to
6 criteria specific to THIS task, each with a short explanation and a weight (weights in a dimension sum to 1).

<task>
{prompt}
</task>

Answer with JSON only, in this layout:
{{"dimension_weight": {{"comprehensiveness": 0.3, "insight": 0.35, "instruction_following": 0.2, "readability": 0.15}},
 "criterions": {{"comprehensiveness": [{{"criterion": "...", "explanation": "...", "weight": 0.4}}, ...],
                "insight": [...], "instruction_following": [...], "readability": [...]}}}}"""


async def generate_criteria(judge: Judge, prompt: str) -> TaskCriteria:
    """Task criteria written by the judge (used when the benchmark's criteria file is not given)."""

    def parse(obj):
        try:
            return parse_criteria(obj if isinstance(obj, dict) else {}, "generated criteria")
        except ValueError as err:
            raise JudgeError(str(err)) from None

    return await judge.ask(CRITERIA_PROMPT.format(prompt=prompt), parse, what="criteria generation")


# ------------------------------------------------------------------------------------------------ scoring
SCORE_PROMPT = """You are an expert reviewer. Compare two research reports written for the same task, criterion
by criterion. Score each report on each criterion from 0 (absent or wrong) to 10 (excellent), judging the
text as written: do not reward length for its own sake, and do not reward claims the report does not support.

<task>
{prompt}
</task>

<article_1>
{target}
</article_1>

<article_2>
{reference}
</article_2>

<criteria>
{criteria}
</criteria>

Answer with JSON only: for every dimension, one entry per criterion, in the order given:
{{"comprehensiveness": [{{"criterion": "...", "article_1_score": 7, "article_2_score": 8}}, ...],
 "insight": [...], "instruction_following": [...], "readability": [...]}}"""


def criteria_text(criteria: TaskCriteria) -> str:
    return json.dumps({d: [{"criterion": c.text, "explanation": c.explanation} for c in criteria.criteria[d]]
                       for d in DIMENSIONS}, ensure_ascii=False, indent=1)


def parse_scores(obj, criteria: TaskCriteria) -> dict[str, list[tuple[float, float]]]:
    """Per dimension, one (target, reference) score pair per criterion, in criteria order.

    Entries are matched by position: judges paraphrase criterion names, but must give exactly one entry
    per criterion. Raises JudgeError on a missing dimension, a wrong count, or a score outside 0..10.
    """
    if not isinstance(obj, dict):
        raise JudgeError("expected a JSON object keyed by dimension")
    pairs = {}
    for dim in DIMENSIONS:
        items = obj.get(dim)
        want = len(criteria.criteria[dim])
        if not isinstance(items, list):
            raise JudgeError(f"dimension {dim!r} missing")
        if len(items) != want:
            raise JudgeError(f"dimension {dim!r}: {len(items)} entries for {want} criteria")
        out = []
        for k, item in enumerate(items):
            try:
                t, r = float(item["article_1_score"]), float(item["article_2_score"])
            except (KeyError, TypeError, ValueError):
                raise JudgeError(f"{dim}[{k}]: needs numeric article_1_score and article_2_score") from None
            if not (0 <= t <= 10 and 0 <= r <= 10):
                raise JudgeError(f"{dim}[{k}]: score outside 0..10 ({t}, {r})")
            out.append((t, r))
        pairs[dim] = out
    return pairs


def weighted_scores(pairs: dict[str, list[tuple[float, float]]], criteria: TaskCriteria) -> dict:
    """The RACE arithmetic (module docstring). Returns dims (target/reference share per dimension),
    target_total, reference_total and score; score is None when both totals are 0 (the task is dropped)."""
    dims, t_total, r_total = {}, 0.0, 0.0
    for dim in DIMENSIONS:
        ws = [c.weight for c in criteria.criteria[dim]]
        t_d = sum(w * t for w, (t, _) in zip(ws, pairs[dim])) / sum(ws)
        r_d = sum(w * r for w, (_, r) in zip(ws, pairs[dim])) / sum(ws)
        dims[dim] = {"target": t_d, "reference": r_d,
                     "score": t_d / (t_d + r_d) if t_d + r_d > 0 else None}
        t_total += criteria.dimension_weight[dim] * t_d
        r_total += criteria.dimension_weight[dim] * r_d
    score = t_total / (t_total + r_total) if t_total + r_total > 0 else None
    return {"dims": dims, "target_total": t_total, "reference_total": r_total, "score": score}


@dataclass
class RaceReport:
    """Scored tasks, dropped tasks (with reasons), and the means over scored tasks (x100)."""
    tasks: list[dict]
    dropped: list[dict]
    summary: dict
    judge: str

    def to_json(self) -> dict:
        return asdict(self)


def summarize(tasks: list[dict], dropped: list[dict]) -> dict:
    n = len(tasks)
    out = {"scored": n, "dropped": len(dropped),
           "judge_failures": sum(d.get("kind") == "judge" for d in dropped)}
    out["overall"] = 100 * sum(t["score"] for t in tasks) / n if n else None
    for dim in DIMENSIONS:
        vals = [t["dims"][dim]["score"] for t in tasks if t["dims"][dim]["score"] is not None]
        out[dim] = 100 * sum(vals) / len(vals) if vals else None
    return out


async def score_task(judge: Judge, task: dict, target: str, reference: str, criteria: TaskCriteria) -> dict:
    """One task's RACE score; raises JudgeFailure when the judge gives no usable answer."""
    prompt = SCORE_PROMPT.format(prompt=task["prompt"], target=target, reference=reference,
                                 criteria=criteria_text(criteria))
    pairs = await judge.ask(prompt, lambda obj: parse_scores(obj, criteria), what=f"task {task.get('id')}")
    result = weighted_scores(pairs, criteria)
    if result["score"] is None:
        raise JudgeFailure(f"task {task.get('id')}: both reports scored 0 on every criterion (0/0)")
    return {"id": task.get("id"), "pairs": pairs, **result}


async def run_race(tasks: list[dict], targets: list[dict], references: list[dict], judge: Judge,
                   criteria_rows: list[dict] | None = None, concurrency: int = 8) -> RaceReport:
    """Score every task. Tasks without a target or reference are dropped with that reason (counted)."""
    targets_by, refs_by = ByTask(targets), ByTask(references)
    crit_by = ByTask(criteria_rows) if criteria_rows is not None else None
    gate = asyncio.Semaphore(concurrency)

    async def one(task):
        tid = task.get("id")
        target, reference = targets_by.get(task), refs_by.get(task)
        if target is None or not str(target.get("article", "")).strip():
            return {"id": tid, "kind": "input", "reason": "no target article"}
        if reference is None or not str(reference.get("article", "")).strip():
            return {"id": tid, "kind": "input", "reason": "no reference article"}
        async with gate:
            try:
                if crit_by is None:
                    criteria = await generate_criteria(judge, task["prompt"])
                else:
                    row = crit_by.get(task)
                    if row is None:
                        return {"id": tid, "kind": "input", "reason": "no criteria row"}
                    criteria = parse_criteria(row, f"criteria for task {tid}")
                return await score_task(judge, task, target["article"], reference["article"], criteria)
            except JudgeFailure as err:
                return {"id": tid, "kind": "judge", "reason": str(err)}

    results = await asyncio.gather(*(one(t) for t in tasks))
    scored = [r for r in results if "score" in r]
    dropped = [r for r in results if "score" not in r]
    return RaceReport(scored, dropped, summarize(scored, dropped), judge.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="RACE scores of target reports against reference reports.")
    ap.add_argument("--tasks", required=True, help="JSONL {id, prompt, language?}")
    ap.add_argument("--targets", required=True, help="JSONL {id, prompt, article}: the reports to score")
    ap.add_argument("--references", required=True, help="JSONL {id, prompt, article}: reference reports")
    ap.add_argument("--criteria", help="the benchmark's criteria.jsonl; without it the judge writes criteria")
    ap.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--judge-model", required=True)
    ap.add_argument("--api-key-env", default="", help="name of the environment variable holding the key")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", required=True, help="JSON file for per-task scores, drops and the summary")
    args = ap.parse_args(argv)
    judge = Judge.from_endpoint(args.judge_url, args.judge_model, api_key_env=args.api_key_env)
    report = asyncio.run(run_race(read_jsonl(args.tasks), read_jsonl(args.targets), read_jsonl(args.references),
                                  judge, read_jsonl(args.criteria) if args.criteria else None, args.concurrency))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    s = report.summary
    print(f"RACE ({report.judge}): scored {s['scored']}, dropped {s['dropped']} "
          f"({s['judge_failures']} judge failures, the rest missing input rows)")
    for key in ("overall",) + DIMENSIONS:
        print(f"  {key:22s} {s[key]:.2f}" if s[key] is not None else f"  {key:22s} n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())

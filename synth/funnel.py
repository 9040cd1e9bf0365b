"""The quality funnel (PAPER §4): N candidates per question -> hard rules -> the judge picks the best, reading the
trajectory and the report (synth/selection.py); no candidate kept (all invalid, all judges abstained, or the best
below workflow.min_score) -> up to workflow.regenerate further rounds, then the question is rejected with why.

    synth = Synthesizer.from_config(cfg)
    outcome = await synth.synthesize(question, qid)
    outcome.record      # Interface 2 record of the chosen candidate, or None when every candidate failed
    outcome.rejections  # one "candidate k: reason: detail" string per rejected candidate (also the unchosen)

Hard rules: protocol.validate (closed tags, order, enough reasoning steps and tool calls, <= 64k tokens,
language match) plus two of our own: `uncited_report` (a report must cite at least one reference) and
`unobserved_citation` (every URL in the References list appears in an observation of the same trajectory).
workflow.rules picks the family (RULES):
  band   (default) `tool_band`: N = protocol.tool_n (min(#web_search, #crawl_page), distinct calls, exactly as
         R_tool counts it) within [workflow.tool_low, workflow.tool_high], the band the reward pays for (defaults
         protocol.TOOL_LOW/TOOL_HIGH, 2 and 8), and at least 2 * tool_low tool calls and reasoning steps; the
         workflow budgets each researcher's tool calls so that the trajectory stays within the band. Data and
         reward then agree: the funnel keeps no trajectory whose R_tool is the over-use penalty.
  paper  the paper's rules for large teachers: >= 10 reasoning steps, >= 5 tool calls, no upper bound.
workflow.min_reasoning_steps / min_tool_calls override the family's minimums (None keeps them).

`run_job(store, job_id, synth)` drives a stored job: every pending question, `concurrency` at a time; each
outcome is committed as soon as it is known, so a killed process resumes where it stopped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import pathlib
import time

from oresearcher import protocol
from synth import __version__
from synth.checks import check_workflow
from synth.config import config_hash
from synth.llm import Accounting, LLMError
from synth.selection import score_candidate
from synth.teachers import ACCOUNTING, TeacherError, make_teacher
from synth.teachers.multi import CANDIDATE, lineage_json, new_lineage
from synth.teachers.roles import ROLE_CHATS
from synth.workflow import Candidate, Workflow

PROMPTS = pathlib.Path(__file__).parent / "prompts"
log = logging.getLogger(__name__)


def prompt_hashes() -> dict[str, str]:
    """sha256 of the head every role's chat starts with (its prompt and worked example turns, exactly as
    synth.teachers.openai.role_prompt sends them), recorded in each record's meta."""
    from synth.teachers.openai import role_prompt
    return {p.stem: hashlib.sha256(json.dumps(role_prompt(p.stem), sort_keys=True).encode()).hexdigest()
            for p in sorted(PROMPTS.glob("*.txt"))}


def make_judge(cfg, tools):
    from synth.judge import HeuristicJudge, LLMJudge
    if cfg.judge.kind == "heuristic":
        return HeuristicJudge(tools)
    if cfg.judge.kind == "llm":
        from synth.llm import LLMClient
        return LLMJudge(LLMClient.from_config(cfg.judge))
    raise ValueError(f"judge.kind={cfg.judge.kind!r}: choose 'heuristic' or 'llm'")


def observed_text(text: str) -> str:
    return "\n".join(text[s.body_start:s.body_end] for s in protocol.parse(text) if s.tag == "observation")


# workflow.rules -> (min_reasoning_steps, min_tool_calls, band?); None: twice tool_low (a search and a crawl per
# unit of N, each after a think).
RULES = {"band": (None, None, True), "paper": (10, 5, False)}


@dataclasses.dataclass(frozen=True)
class Rules:
    min_reasoning_steps: int
    min_tool_calls: int
    band: tuple[int, int] | None   # (low, high) of N, or None (no band)

    @classmethod
    def of(cls, w) -> Rules:
        """The hard rules a workflow config asks for (workflow.rules and its explicit minimums)."""
        name = w.get("rules", "band")
        if name not in RULES:
            raise ValueError(f"workflow.rules={name!r}: choose {' or '.join(RULES)}")
        steps, calls, band = RULES[name]
        low = int(w.get("tool_low", protocol.TOOL_LOW))
        high = int(w.get("tool_high", protocol.TOOL_HIGH))
        steps = w.get("min_reasoning_steps") if w.get("min_reasoning_steps") is not None else steps
        calls = w.get("min_tool_calls") if w.get("min_tool_calls") is not None else calls
        return cls(int(2 * low if steps is None else steps), int(2 * low if calls is None else calls),
                   (low, high) if band else None)


def hard_rules(text: str, report: str, question: str, w) -> list[str]:
    """All reasons a candidate fails the funnel's hard rules ([] = passes)."""
    rules = Rules.of(w)
    reasons = protocol.validate(text, question, min_reasoning_steps=rules.min_reasoning_steps,
                                min_tool_calls=rules.min_tool_calls, max_tokens=w.max_tokens)
    if rules.band is not None:
        n, (low, high) = protocol.tool_n(text), rules.band
        if not low <= n <= high:
            reasons.append(f"tool_band: N = min(#web_search, #crawl_page) = {n} distinct calls is outside "
                           f"[{low}, {high}], the band R_tool pays for (workflow.tool_low/tool_high)")
    references = protocol.parse_references(report)
    cited = set(protocol.cited_numbers(report))
    if not references or not cited & {n for n, _, _ in references}:
        reasons.append("uncited_report: the report cites none of its references")
    evidence = observed_text(text)
    for n, url, _ in references:
        if url not in evidence:
            reasons.append(f"unobserved_citation: [{n}] {url} appears in no observation")
    return reasons


@dataclasses.dataclass
class Outcome:
    record: dict | None
    rejections: list[str]


class Synthesizer:
    """Teacher + tools + judge + funnel settings for one config."""

    def __init__(self, cfg, tools, teacher, judge):
        check_workflow(cfg.workflow)   # the CLI, the service and a job's overrides share the ranges
        self.cfg, self.tools, self.teacher, self.judge = cfg, tools, teacher, judge
        w = cfg.workflow
        band = Rules.of(w).band
        self.workflow = Workflow(teacher, tools, step_budget=w.step_budget, mode=w.mode,
                                 min_subtasks=w.min_subtasks, max_subtasks=w.max_subtasks,
                                 tool_high=band[1] if band else None)
        self.config_hash = config_hash(cfg)
        self.prompt_hashes = prompt_hashes()

    @classmethod
    def from_config(cls, cfg, tools=None) -> Synthesizer:
        from synth.tools import Tools
        tools = tools or Tools.from_config(cfg)
        return cls(cfg, tools, make_teacher(cfg, tools), make_judge(cfg, tools))

    async def aclose(self) -> None:
        await self.tools.aclose()
        await self.aclose_clients()

    async def aclose_clients(self) -> None:
        """Close the teacher's and judge's LLM clients only (a job's own synthesizer shares the service's tools)."""
        clients = getattr(self.teacher, "clients", None) or [getattr(self.teacher, "llm", None)]
        for client in dict.fromkeys([*clients, getattr(self.judge, "llm", None)]):
            if client is not None:
                await client.aclose()

    async def synthesize(self, question: str, qid: str) -> Outcome:
        """Rounds of `workflow.candidates` candidates (1 + workflow.regenerate at most) until one is kept: it
        passes the hard rules, the judge scores it (an abstention is no score) and its score is the best of its
        round and at least workflow.min_score."""
        t0 = time.perf_counter()
        accounting = Accounting()
        w = self.cfg.workflow
        n, rounds, min_score = int(w.candidates), 1 + int(w.get("regenerate", 0)), float(w.get("min_score", 0.0))
        rejections: list[str] = []
        for round_ in range(rounds):
            seeds = range(round_ * n, (round_ + 1) * n)   # fresh seeds: a regenerated candidate is a new sample
            chosen = await self._round(question, qid, seeds, accounting, min_score, rejections)
            if chosen is not None:
                k, candidate, verdict = chosen
                record = self._record(qid, question, candidate, verdict, accounting, rejections, k,
                                      time.perf_counter() - t0, round_ + 1)
                return Outcome(record, rejections)
            if round_ + 1 < rounds:
                rejections.append(f"round {round_ + 1}: no candidate kept; regenerating")
        return Outcome(None, rejections)

    async def _round(self, question, qid, seeds, accounting, min_score, rejections):
        """(k, candidate, verdict) of the round's chosen candidate, or None; every reason goes to `rejections`."""
        runs = await asyncio.gather(*(self._candidate(question, k, accounting) for k in seeds),
                                    return_exceptions=True)
        valid = []
        for k, run in zip(seeds, runs):
            if isinstance(run, BaseException):
                if not isinstance(run, (TeacherError, LLMError)):
                    log.error("candidate %d of %s failed unexpectedly", k, qid, exc_info=run)
                rejections.append(f"candidate {k}: teacher_error: {type(run).__name__}: {str(run)[:300]}")
                continue
            reasons = hard_rules(run.text, run.report, question, self.cfg.workflow)
            if reasons:
                rejections.extend(f"candidate {k}: {r}" for r in reasons)
            else:
                valid.append((k, run))
        if not valid:
            return None
        verdicts = await asyncio.gather(*(self._judge(question, c, accounting) for _, c in valid))
        scored = []
        for (k, c), v in zip(valid, verdicts):
            if v.abstained:
                rejections.append(f"candidate {k}: judge_abstained: {v.reason}")
            else:
                scored.append((v.overall, k, c, v))
        if not scored:
            rejections.append(f"all_abstained: the judge abstained on every valid candidate ({len(valid)})")
            return None
        best = max(scored, key=lambda s: (s[0], -s[1]))
        if best[0] < min_score:
            rejections.extend(f"candidate {k}: below_min_score: judge overall {score:.3f} < {min_score:g}"
                              for score, k, _, _ in scored)
            return None
        for score, k, _, _ in scored:
            if k != best[1]:
                rejections.append(f"candidate {k}: not_selected: judge overall {score:.3f}, "
                                  f"not above the chosen {best[0]:.3f}")
        return best[1], best[2], best[3]

    async def _judge(self, question: str, c: Candidate, accounting: Accounting):
        if self.cfg.workflow.get("selection", "trajectory") == "trajectory":
            return await score_candidate(self.judge, question, c.report, c.text, accounting=accounting)
        return await self.judge.score(question, c.report, c.text)

    async def _candidate(self, question: str, k: int, accounting: Accounting) -> Candidate:
        ACCOUNTING.set(accounting)   # per task: the LLM calls of this candidate are billed to its question
        chats: list = []
        ROLE_CHATS.set(chats)        # per task too: the role chats of this candidate (workflow.role_chats)
        lineage = new_lineage()
        CANDIDATE.set({"k": k, "lineage": lineage})   # which teacher plays each role (teachers/multi.py)
        candidate = await self.workflow.run(question, seed=k)
        candidate.lineage = lineage_json(lineage)
        candidate.role_chats = [chat for _, chat in sorted(chats, key=lambda oc: oc[0])]
        return candidate

    def _record(self, qid, question, c: Candidate, verdict, accounting, rejections, k, seconds, rounds) -> dict:
        text = c.text
        judge = verdict.to_json()
        judge.pop("details", None)
        errors = [e for r in c.researches for e in r.errors]
        tokens = {"trajectory_estimate": protocol.estimate_tokens(text),
                  "prompt": accounting.prompt_tokens, "completion": accounting.completion_tokens}
        record = {
            "id": qid, "question": question,
            "messages": [{"role": "system", "content": protocol.system_prompt()},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": text}],
            "report": c.report,
            "meta": {
                "teachers": _teachers(c, self.teacher),
                "lineage": getattr(c, "lineage", None),
                "tool_calls": protocol.count_tool_calls(text),
                "tool_n": protocol.tool_n(text),   # N of R_tool (distinct calls)
                "subtasks": len(c.subtasks),
                "reasoning_steps": sum(1 for s in protocol.parse(text) if s.tag in ("think", "plan")),
                "retries": accounting.retries, "llm": accounting.to_dict(),
                "tool_errors": errors, "tool_error": bool(errors),
                "wasted_steps": sum(r.wasted for r in c.researches),
                "tokens": tokens, "judge": judge, "candidate": k,
                "candidates": int(self.cfg.workflow.candidates), "rejected_candidates": len(rejections),
                "rounds": rounds, "selection": self.cfg.workflow.get("selection", "trajectory"),
                "timings": {**{key: round(v, 4) for key, v in c.timings.items()}, "question_s": round(seconds, 4)},
                "mode": self.cfg.workflow.mode,
                "config_hash": self.config_hash, "prompt_hashes": self.prompt_hashes,
                "synth_version": __version__,
            },
        }
        if self.cfg.workflow.get("role_chats", False):
            record["role_chats"] = c.role_chats
        return record


def _teachers(c: Candidate, teacher) -> list[str]:
    """The distinct teachers that wrote candidate `c` (its lineage), else the teacher's name."""
    lineage = getattr(c, "lineage", None) or {}
    names = [lineage.get("planner"), *lineage.get("researchers", []), lineage.get("summarizer")]
    return list(dict.fromkeys(n for n in names if n)) or [getattr(teacher, "name", "unknown")]


async def run_job(store, job_id: str, synth: Synthesizer, *, concurrency: int = 16, progress=None) -> None:
    """Decide every pending question of a stored job; progress(accepted: bool) after each one."""
    pending = store.pending(job_id)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(idx: int, qid: str, question: str) -> None:
        async with gate:
            if store.job(job_id)["status"] == "cancelled":
                return
            try:
                outcome = await synth.synthesize(question, qid)
            except Exception as error:   # one broken question must not stop the job
                log.error("question %s failed", qid, exc_info=error)
                outcome = Outcome(None, [f"internal_error: {type(error).__name__}: {str(error)[:300]}"])
            if outcome.record is not None:
                store.accept(job_id, idx, outcome.record, outcome.rejections)
            else:
                store.reject(job_id, idx, outcome.rejections)
            if progress is not None:
                progress(outcome.record is not None)

    await asyncio.gather(*(one(*q) for q in pending))
    if store.job(job_id)["status"] == "running":
        store.set_status(job_id, "done")


def run_async(coroutine):
    """Run `coroutine` to completion on uvloop when it is installed (uvicorn picks it for the service too; it
    cuts the event loop's share of the CPU per LLM call), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)

"""What the viewer reads: synth outputs, RL workdirs, run_agent outputs and plain JSONL files of traces.

A `Source` is one PATH given on the command line: a few JSONL files whose lines are listed (`Part`s) and the
small files beside them (summary.json, scores.json, metrics.jsonl). Every line becomes, when asked for, a
`Summary` (one row of the index) or a `Trace` (one page). Which record a line holds is read from its fields:

    trajectory record   {"id", "question", "messages", "report", "meta"}    synth trajectories.jsonl, run_agent
    rejected question   {"id", "question", "accepted", "reasons"}           synth rejected.jsonl
    RL episode          {"step", "group", "question", "response", "reward", "reward/base", ..., "advantage"}
    released trace      {"id", "prompt", "article", "current_answer"}       O-Researcher's own outputs
    benchmark output    {"id", "prompt", "article"}                         run_agent output.jsonl (report only)

A line is addressed as "<source>.<part>.<line>" (all 0-based), e.g. /t/0.0.17.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from pathlib import Path

from experiments.view.jsonl import JsonlFile, needles
from oresearcher import protocol

# The categories the index can filter on, in the order the menu shows them.
CATEGORIES = ("accepted", "rejected", "kept", "dropped", "abstained", "report", "no report", "unreadable")


@dataclasses.dataclass
class Summary:
    key: str                    # "<source>.<part>.<line>"
    id: str
    question: str
    category: str               # one of CATEGORIES
    outcome: str                # the category's detail: the reason, the reward parts, the stop reason
    tool_calls: int | None
    tokens: int | None          # protocol.estimate_tokens of the trajectory (None: no trajectory stored)
    listed: bool = True         # False: a rejected.jsonl row of an accepted question (shown on its trace)


@dataclasses.dataclass
class Trace:
    summary: Summary
    text: str | None            # the assistant trajectory, observations inside (None: a rejected question)
    report: str | None          # the final report
    judge: dict | None          # {"judge", "overall", "scores"} or {"abstained", "reason"}
    reward: dict                # reward parts, advantage, kept ... (RL); R_format, R_tool of any trajectory
    reasons: list[str]          # why the question or its other candidates were rejected
    meta: dict                  # everything else the record says


@dataclasses.dataclass
class Part:
    file: JsonlFile
    role: str                   # "trajectories", "rejected", "episodes", "traces"


class Source:
    KINDS = {"synth": "synth output", "rl": "RL workdir", "agent": "run_agent output", "file": "JSONL file"}

    def __init__(self, index: int, path: str | Path):
        self.index, self.path = index, Path(path)
        self.parts: list[Part] = []
        self.summary_json: dict = {}
        self.scores: dict[str, dict] = {}        # run_agent scores.json, by question id
        self.metrics_path: Path | None = None
        if not self.path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory; give a synth output directory, an RL "
                                    "workdir, a run_agent output directory or a JSONL file of traces")
        if self.path.is_file():
            self.kind = "file"
            self.parts.append(Part(JsonlFile(self.path), "traces"))
            return
        files = {p.name for p in self.path.iterdir()}
        if "episodes.jsonl" in files or "metrics.jsonl" in files:
            self.kind = "rl"
            if "episodes.jsonl" in files:
                self.parts.append(Part(JsonlFile(self.path / "episodes.jsonl"), "episodes"))
            if "metrics.jsonl" in files:
                self.metrics_path = self.path / "metrics.jsonl"
        elif "trajectories.jsonl" in files or "rejected.jsonl" in files:
            self.kind = "agent" if {"output.jsonl", "scores.json"} & files else "synth"
            for name, role in (("trajectories.jsonl", "trajectories"), ("rejected.jsonl", "rejected")):
                if name in files:
                    self.parts.append(Part(JsonlFile(self.path / name), role))
            self.summary_json = _read_json(self.path / "summary.json")
            scores = _read_json(self.path / "scores.json")
            self.scores = {str(row.get("id")): row for row in scores.get("questions", []) if isinstance(row, dict)}
        else:
            raise ValueError(f"{path}: holds none of trajectories.jsonl, rejected.jsonl (synth, run_agent), "
                             "episodes.jsonl, metrics.jsonl (RL workdir); give one of those directories")

    @property
    def name(self) -> str:
        return f"{self.path.name or self.path} ({self.KINDS[self.kind]})"

    def key(self, part: int, line: int) -> str:
        return f"{self.index}.{part}.{line}"


class Catalog:
    """The sources of one viewer, with summaries cached (at most `cache` of them) as pages ask for them."""

    def __init__(self, paths: list[str | Path], cache: int = 100_000):
        if not paths:
            raise ValueError("no PATH given; name at least one synth output, RL workdir or run_agent output")
        self.sources = [Source(i, p) for i, p in enumerate(paths)]
        self._summaries: OrderedDict[str, Summary] = OrderedDict()
        self._cache = cache

    def locate(self, key: str) -> tuple[Source, int, int]:
        try:
            s, p, line = (int(x) for x in key.split("."))
            if min(s, p, line) < 0:
                raise ValueError(key)
            source = self.sources[s]
            source.parts[p].file.wait_for(line + 1)
            source.parts[p].file.raw(line)
        except (ValueError, IndexError):
            raise KeyError(f"no trace {key!r}: trace keys are <source>.<part>.<line> as the index links them") from None
        return source, p, line

    def summary(self, source: Source, p: int, line: int, data: bytes | None = None) -> Summary | None:
        """The index row of a line (`data`: its bytes, when the caller has read them)."""
        key = source.key(p, line)
        hit = self._summaries.get(key)
        if hit is not None:
            return hit
        part = source.parts[p]
        try:
            row = part.file.record(line, data)
        except ValueError as error:
            return Summary(key, f"line {line + 1}", "", "unreadable", str(error), None, None)
        if row is None:
            return None
        summary = read(row, key, line, source).summary
        self._summaries[key] = summary
        if len(self._summaries) > self._cache:
            self._summaries.popitem(last=False)
        return summary

    def _lines(self, start: str | None, wanted: tuple[bytes, ...] = ()):
        """(source, part index, line, its bytes) from `start` ("s.p.line") to the end of the last source (only
        lines holding one of `wanted`, if given), waiting for the background scans only as far as the walk
        gets. A filtered walk also yields (source, part, line, None) after each block it searched (`line`: the
        first line not searched yet), so the caller can stop on time."""
        s0, p0, l0 = (int(x) for x in start.split(".")) if start else (0, 0, 0)
        for source in self.sources[s0:]:
            for p, part in enumerate(source.parts):
                if (source.index, p) < (s0, p0):
                    continue
                line = l0 if (source.index, p) == (s0, p0) else 0
                while line < (known := part.file.wait_for(line + 1)):
                    for i, data in part.file.lines(line, known, wanted):
                        yield source, p, i, data
                    line = known

    def listing(self, text: str = "", category: str = "", start: str | None = None, limit: int = 100,
                budget_s: float = 2.0) -> tuple[list[Summary], str | None]:
        """Up to `limit` summaries from `start` on whose record contains `text` (anywhere, any case) and whose
        category is `category` ("" = any), and the key to continue from (None at the end). A filter that
        matches rarely stops after `budget_s` seconds with what it found, so a huge file never stalls a page."""
        wanted = needles(text) if text else ()
        rows: list[Summary] = []
        deadline = time.monotonic() + budget_s
        for source, p, line, data in self._lines(start, wanted):
            if len(rows) >= limit or (wanted or category) and time.monotonic() > deadline:
                return rows, source.key(p, line)
            if data is None:
                continue
            summary = self.summary(source, p, line, data)
            if summary is not None and summary.listed and (not category or summary.category == category):
                rows.append(summary)
        return rows, None

    def same_question(self, question: str, exclude: str, limit: int = 20, budget_s: float = 1.0) -> list[Summary]:
        """Other listed traces of the same question in every source (teacher and policy side by side)."""
        if not question:
            return []
        wanted = tuple({b'"' + n + b'"' for n in needles(question)})
        out, deadline = [], time.monotonic() + budget_s
        for source, p, line, data in self._lines(None, wanted):
            if len(out) >= limit or time.monotonic() > deadline:
                break
            if data is None or source.key(p, line) == exclude:
                continue
            summary = self.summary(source, p, line, data)
            if summary is not None and summary.listed and summary.question.strip() == question.strip():
                out.append(summary)
        return out

    def trace(self, key: str) -> tuple[Source, Trace]:
        source, p, line = self.locate(key)
        part = source.parts[p]
        row = part.file.record(line)
        if row is None:
            raise KeyError(f"trace {key!r} is a blank line of {part.file.path}")
        trace = read(row, key, line, source)
        if part.role == "trajectories":   # the candidates the funnel turned down for this question
            trace.reasons = rejections_of(source, trace.summary.id) + trace.reasons
        return source, trace


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def rejections_of(source: Source, qid: str) -> list[str]:
    """The reasons rejected.jsonl gives for question `qid` (the file is searched for the raw id, so only the
    lines that hold it are parsed)."""
    for part in source.parts:
        if part.role != "rejected":
            continue
        part.file.wait_all()
        for i, data in part.file.lines(0, part.file.count(), needles(qid)):
            row = part.file.record(i, data) if data is not None else None
            if row is not None and str(row.get("id")) == qid:
                return [str(r) for r in row.get("reasons", [])]
    return []


# ------------------------------------------------------------------------------------------------ records
def assistant_text(messages: list) -> str | None:
    texts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    texts = [t for t in texts if isinstance(t, str)]
    return texts[-1] if texts else None


def local_reward(text: str) -> dict:
    """R_format and R_tool as the RL reward computes them (default thresholds), for traces that were not
    rewarded (teacher trajectories, run_agent outputs)."""
    return {"R_format": protocol.format_reward(text), "R_tool": protocol.tool_reward(text)}


def _count_calls(meta_calls, text: str | None) -> int | None:
    if isinstance(meta_calls, dict):
        return int(sum(v for v in meta_calls.values() if isinstance(v, (int, float))))
    if isinstance(meta_calls, list):
        return len(meta_calls)
    return sum(protocol.count_tool_calls(text).values()) if text else None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}" if isinstance(x, float) and x < 0 else \
        f"{x:.3f}" if isinstance(x, float) else str(x)


def read(row: dict, key: str, line: int, source: Source) -> Trace:
    """The Trace a JSONL row holds (see the module docstring for the record layouts)."""
    if "response" in row and "step" in row:
        return _episode(row, key, line)
    if "reasons" in row and "accepted" in row and "messages" not in row:
        reasons = [str(r) for r in row.get("reasons", [])]
        first = reasons[0].split(": ", 1)[-1] if reasons else "no reason recorded"
        summary = Summary(key, str(row.get("id", "")), str(row.get("question", "")), "rejected",
                          f"{len(reasons)} rejection(s); {first}", None, None, listed=not row.get("accepted"))
        return Trace(summary, None, None, None, {}, reasons, {})
    if "messages" in row:
        return _trajectory(row, key, source)
    if "prompt" in row and ("current_answer" in row or "article" in row):
        text = row.get("current_answer") if isinstance(row.get("current_answer"), str) else None
        report = (protocol.extract_report(text) if text else None) or row.get("article") or None
        category = "report" if report else "no report"
        summary = Summary(key, str(row.get("id", "")), str(row.get("prompt", "")), category,
                          "final report written" if report else "no final report",
                          _count_calls(None, text), protocol.estimate_tokens(text) if text else None)
        reward = local_reward(text) if text else {}
        meta = {k: v for k, v in row.items() if k not in ("prompt", "article", "current_answer")}
        return Trace(summary, text, report, None, reward, [], meta)
    fields = ", ".join(sorted(row)[:12])
    summary = Summary(key, f"line {line + 1}", "", "unreadable",
                      f"unknown record (fields: {fields}); the viewer reads trajectory records, rejected.jsonl "
                      "rows, RL episodes and {prompt, article} rows", None, None)
    return Trace(summary, None, None, None, {}, [], row)


def _trajectory(row: dict, key: str, source: Source) -> Trace:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    text = assistant_text(row.get("messages") or [])
    report = row.get("report") or (protocol.extract_report(text) if text else None) or None
    qid = str(row.get("id", ""))
    judge = meta.get("judge") if isinstance(meta.get("judge"), dict) else None
    scores = source.scores.get(qid, {})
    if judge is None and isinstance(scores.get("judge"), dict):
        judge = scores["judge"]
    if "policy" in meta or source.kind == "agent":   # a run_agent trajectory: did it end with a report?
        category = "report" if report else "no report"
        outcome = (f"stop: {meta.get('stop_reason')}" if meta.get("stop_reason") else
                   "final report written" if report else "no final report")
    else:
        category = "accepted"
        outcome = f"accepted; judge {_fmt(judge.get('overall'))}" if judge and not judge.get("abstained") \
            else "accepted"
    summary = Summary(key, qid, str(row.get("question", "")), category, outcome,
                      _count_calls(meta.get("tool_calls"), text), protocol.estimate_tokens(text) if text else None)
    reward = local_reward(text) if text else {}
    reward.update({k: v for k, v in scores.items() if k in ("kpr", "kpc", "turns")})
    rest = {k: v for k, v in meta.items() if k != "judge"}
    return Trace(summary, text, report, judge, reward, [], rest)


def _episode(row: dict, key: str, line: int) -> Trace:
    text = row.get("response") if isinstance(row.get("response"), str) else ""
    if row.get("abstained"):
        category = "abstained"
    else:
        category = "kept" if row.get("kept", True) else "dropped"
    parts = (f"reward {_fmt(row.get('reward'))} (base {_fmt(row.get('reward/base'))} tool "
             f"{_fmt(row.get('reward/tool'))} format {_fmt(row.get('reward/format'))}) "
             f"advantage {_fmt(row.get('advantage'))}")
    summary = Summary(key, f"step {row.get('step')} group {row.get('group')} #{line + 1}",
                      str(row.get("question", "")), category, parts,
                      _count_calls(row.get("tool_calls"), text), protocol.estimate_tokens(text))
    reward = {k: row.get(k) for k in ("reward", "reward/base", "reward/tool", "reward/format", "advantage",
                                      "kept", "abstained", "finish") if k in row}
    judge = {"judge": row.get("judge"), "overall": row.get("reward/base")} if row.get("judge") else None
    meta = {k: v for k, v in row.items() if k not in reward and k not in ("response", "question", "judge")}
    return Trace(summary, text, protocol.extract_report(text), judge, reward, [], meta)

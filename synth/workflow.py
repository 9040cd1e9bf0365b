"""The multi-agent workflow (PAPER §3-4): planner -> researchers -> summarizer -> one protocol trajectory.

    workflow = Workflow(teacher, tools, step_budget=10, mode="parallel")
    candidate = await workflow.run(question, seed=0)
    candidate.text     # the assistant content: <subtask_list>, then per subtask <subtask> <think> <plan>
                       # <web_search>/<crawl_page> <observation> ... <subtask_answer>, then <suggested_answer>
    candidate.report   # the <suggested_answer> body: cited report with a "[n]. URL - Title" References list

Each researcher is its own Plan -> Execute -> Observe loop over one sub-query, bounded by `step_budget` tool
calls (with `tool_high`, the reward's band, K researchers share 2 * tool_high calls: `Workflow.budget`); in
"parallel" mode the researchers run concurrently (asyncio), in "sequential" mode (the single-context ablation) one
after another, each seeing everything its predecessors wrote. Sub-reports cite with their own numbers; the
summarizer's report is renumbered globally, and only references whose URL was shown in an observation of this
trajectory survive, so every cited URL can be checked against the evidence.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time

from oresearcher import protocol
from synth.teachers import Step, TeacherError

_SECTION = re.compile(r"^## \[(.*?)\]\((\S+?)\)\s*$", re.MULTILINE)
_HIT = re.compile(r"^\d+\.\s*\[(.*?)\]\((\S+?)\)", re.MULTILINE)
_CITE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\](?!\()")
_REF_LINE = re.compile(r"^\s*\[\d+\]\.?\s*<?https?://.*$", re.MULTILINE)
_COMMA = re.compile(r"\s*,\s*")
_REFS_HEADING = re.compile(r"^\s*#*\s*\**(references|sources|参考文献)\**\s*:?\s*$", re.IGNORECASE | re.MULTILINE)


@dataclasses.dataclass
class Observed:
    """One executed tool call: the tag, the call body as written, and the tool's result."""
    tool: str
    call: str
    result: object   # synth.tools.ToolResult


@dataclasses.dataclass
class Research:
    """The state of one researcher: its sub-query, what it wrote, what it saw."""
    question: str
    subtask: str
    index: int
    budget: int
    prior: str = ""                                   # earlier subtasks' text (sequential mode only)
    elements: list = dataclasses.field(default_factory=list)      # [(tag, body)] in order, observations included
    observed: list = dataclasses.field(default_factory=list)      # [Observed]
    answer: str = ""
    errors: list = dataclasses.field(default_factory=list)        # tool errors (copied into meta)
    wasted: int = 0                                               # teacher steps that were unusable

    @property
    def calls(self) -> int:
        return len(self.observed)

    def seen(self) -> dict[str, str]:
        """url -> title of every page listed or read in this research's observations."""
        urls: dict[str, str] = {}
        for o in self.observed:
            for hit in o.result.hits:
                urls.setdefault(hit.url, hit.title)
            for page in o.result.pages:
                urls[page.url] = page.title
            for title, url in _SECTION.findall(o.result.observation) + _HIT.findall(o.result.observation):
                urls.setdefault(url, title)
        return urls


@dataclasses.dataclass
class Candidate:
    text: str
    report: str
    subtasks: list
    researches: list
    timings: dict
    role_chats: list = dataclasses.field(default_factory=list)   # [{role, messages}]: teachers/roles.py
    lineage: dict = dataclasses.field(default_factory=dict)      # who played each role: teachers/multi.py


def split_answer(answer: str) -> tuple[str, list[tuple[int, str, str]]]:
    """A sub-report -> (body without its reference lines, [(n, url, title)])."""
    refs = protocol.parse_references(answer)
    ref_lines = {m.group(0) for m in _REF_LINE.finditer(answer)}
    body = "\n".join(line for line in answer.split("\n") if line not in ref_lines)
    body = _REFS_HEADING.sub("", body).strip()
    return body, refs


def renumber(body: str, mapping: dict[int, int]) -> str:
    """Rewrite inline citations through `mapping`; numbers without a mapping are dropped."""
    def sub(m: re.Match) -> str:
        numbers = [mapping[int(n)] for n in _COMMA.split(m.group(1)) if int(n) in mapping]
        return "".join(f"[{n}]" for n in dict.fromkeys(numbers))
    return _CITE.sub(sub, body)


def fuse_citations(researches: list[Research]) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Sub-report bodies renumbered onto one global reference list, keeping only observed URLs."""
    global_refs: dict[str, tuple[int, str]] = {}
    bodies = []
    for r in researches:
        body, refs = split_answer(r.answer)
        seen = r.seen()
        mapping = {}
        for n, url, title in refs:
            if url not in seen:
                continue
            if url not in global_refs:
                global_refs[url] = (len(global_refs) + 1, title or seen[url])
            mapping[n] = global_refs[url][0]
        bodies.append(renumber(body, mapping))
    return bodies, [(n, url, title) for url, (n, title) in global_refs.items()]


def finish_report(body: str, references: list[tuple[int, str, str]]) -> str:
    """Renumber the report's citations 1..k in order of first use and append "[n]. URL - Title" lines."""
    body, _ = split_answer(body)
    known = {n: (url, title) for n, url, title in references}
    order: dict[int, int] = {}
    for m in _CITE.finditer(body):
        for n in _COMMA.split(m.group(1)):
            if int(n) in known and int(n) not in order:
                order[int(n)] = len(order) + 1
    body = renumber(body, order)
    lines = [f"[{new}]. {known[old][0]} - {known[old][1]}" for old, new in order.items()]
    return body.rstrip() + "\n\n## References\n" + "\n".join(lines)


def assemble(subtasks: list[str], researches: list[Research], report: str) -> str:
    """The one protocol trajectory in PAPER §4 order; observations go through protocol.observation (sanitized)."""
    parts = ["<subtask_list>\n" + "\n".join(f"- {s}" for s in subtasks) + "\n</subtask_list>\n"]
    for r in researches:
        parts.append(f"<subtask>\n{r.subtask}\n</subtask>\n")
        for tag, body in r.elements:
            if tag == "observation":
                parts.append(protocol.observation(body))
            else:
                parts.append(f"<{tag}>\n{body.strip()}\n</{tag}>\n")
        parts.append(f"<subtask_answer>\n{r.answer.strip()}\n</subtask_answer>\n")
    parts.append(f"<suggested_answer>\n{report.strip()}\n</suggested_answer>")
    return "".join(parts)


class Workflow:
    """planner -> researchers (parallel or sequential) -> summarizer -> merge."""

    def __init__(self, teacher, tools, *, step_budget: int = 10, mode: str = "parallel", min_subtasks: int = 3,
                 max_subtasks: int = 6, tool_high: int | None = None):
        if mode not in ("parallel", "sequential"):
            raise ValueError(f"workflow.mode={mode!r}: choose 'parallel' or 'sequential'")
        self.teacher, self.tools, self.mode = teacher, tools, mode
        self.step_budget, self.min_subtasks, self.max_subtasks = step_budget, min_subtasks, max_subtasks
        self.tool_high = tool_high

    def budget(self, subtasks: int) -> int:
        """Tool calls per researcher. With the reward's band (tool_high), K researchers share 2 * tool_high calls:
        N = min(#web_search, #crawl_page) is at most half of all calls, so the trajectory cannot exceed the band
        (each researcher keeps at least one search and one crawl)."""
        if self.tool_high is None:
            return self.step_budget
        return max(2, min(self.step_budget, 2 * self.tool_high // max(1, subtasks)))

    async def run(self, question: str, seed: int = 0) -> Candidate:
        rng = random.Random(f"{seed}:{question}")
        t0 = time.perf_counter()
        subtasks = [s.strip() for s in await self.teacher.plan(question, rng) if s.strip()]
        cap = self.max_subtasks if self.tool_high is None else min(self.max_subtasks, max(1, self.tool_high))
        subtasks = list(dict.fromkeys(subtasks))[:cap]
        if len(subtasks) < self.min_subtasks:
            raise TeacherError(f"planner gave {len(subtasks)} sub-queries, fewer than {self.min_subtasks}")
        t1 = time.perf_counter()
        budget = self.budget(len(subtasks))
        researches = [Research(question, s, i, budget) for i, s in enumerate(subtasks)]
        if self.mode == "parallel":
            await asyncio.gather(*(self.research(r, random.Random(rng.random())) for r in researches))
        else:
            for r in researches:
                r.prior = assemble_prefix(subtasks, researches[: r.index])
                await self.research(r, random.Random(rng.random()))
        t2 = time.perf_counter()
        bodies, references = fuse_citations(researches)
        body = await self.teacher.summarize(question, subtasks, bodies, references, rng)
        report = finish_report(body, references)
        text = assemble(subtasks, researches, report)
        t3 = time.perf_counter()
        return Candidate(text, report, subtasks, researches,
                         {"plan_s": t1 - t0, "research_s": t2 - t1, "summarize_s": t3 - t2, "total_s": t3 - t0})

    async def research(self, r: Research, rng: random.Random) -> None:
        """Plan -> Execute -> Observe until the teacher answers or the research's budget is spent."""
        for turn in range(r.budget + 3):
            final = r.calls >= r.budget
            step: Step = await self.teacher.step(r.question, r, rng, final=final)
            if step.answer is None and (step.call is None or final):
                r.wasted += 1
                if turn >= r.budget + 2:
                    break
                continue
            r.elements.extend((tag, body) for tag, body in step.thoughts if body.strip())
            if step.answer is not None:
                r.answer = step.answer
                return
            await self.execute(r, *step.call)
        raise TeacherError(f"researcher for sub-query {r.index + 1} gave no sub-report within "
                           f"{r.budget} steps")

    async def execute(self, r: Research, tag: str, body: str) -> None:
        """Run one tool call and append the call and its observation."""
        call = protocol.parse_tool_call(tag, body)
        if isinstance(call, protocol.ToolCallError):
            r.wasted += 1
            return
        if isinstance(call, protocol.WebSearch):
            result = await self.tools.web_search(call.queries, call.num)
        else:
            # Without goal= the page is summarised for the researcher's think/plan just before this call.
            context = "".join(f"<{t}>{b}</{t}>" for t, b in r.elements[-4:] if t in ("think", "plan", "observation"))
            result = await self.tools.crawl_page(call.urls, call.goal, context=context)
        if not result.ok:
            r.errors.append(f"{tag}: {result.error}")
        r.elements.append((tag, body.strip()))
        r.elements.append(("observation", result.observation))
        r.observed.append(Observed(tag, body.strip(), result))


def assemble_prefix(subtasks: list[str], done: list[Research]) -> str:
    """The single context the next sequential researcher continues (no summarizer yet)."""
    if not done:
        return ""
    text = assemble(subtasks, done, "")
    return text[: text.rfind("<suggested_answer>")]

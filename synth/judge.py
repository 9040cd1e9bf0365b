"""Report judges: `HeuristicJudge` (embedded, deterministic, no LLM) and `LLMJudge` (OpenAI-compatible rubric).

Both answer `await judge.score(question, report, trajectory=None, reference=None) -> JudgeResult`, whose
`to_json()` is the body of `POST /v1/judge` (DESIGN contract 7). A judge that cannot score ABSTAINS with a
reason; it never turns a failure into a score of 0 (RL masks abstained episodes instead of punishing them).

HeuristicJudge: a stand-in for the LLM judge
--------------------------------------------
It exists so that the funnel and RL run offline; it measures form and grounding, not insight. Rubric, each part
in [0, 1]:
  structure         mean of five checks: an introduction before the first section; a body (>= 2 paragraphs or
                    sections); a conclusion (a closing heading or paragraph that says so); a References section
                    with "[n]. URL - Title" entries; consistency (every cited [n] has an entry, every entry is
                    cited).
  question_coverage share of the question's content words that the report uses.
  evidence_coverage share of the pages gathered in the trajectory (URLs in its observations) that the report
                    cites, counting up to 5 pages as full coverage; without a trajectory, the number of distinct
                    cited sources over 5.
  citation_support  for every (sentence, [n]) pair: the share of the sentence's content words found in the text
                    of the page the reference entry names (fetched through Tools and its cache; the observations
                    of the trajectory are used too), divided by `support_threshold` and capped at 1. A citation
                    without an entry or whose page cannot be read scores 0; with a trajectory, so does one whose
                    URL no observation of it shows (an invented source supports nothing, even a real page).
                    No citations at all scores 0.
  length            min(1, substantive words / target_words): the words of the cited sentences, each weighted
                    by its citation support and its novelty (share of its content words no earlier cited sentence
                    used; 0 below MIN_NOVELTY); repeating a sentence, rewording it or changing one word of a
                    template, or padding with uncited or unsupported text, adds nothing.
  on_topic          share of the report's sections (a "##" heading and its text; the introduction before the
                    first one and a closing conclusion aside) holding a supported cited sentence that shares a
                    content word with the question (plurals folded): a section about something else, however well
                    cited, is not support for this question.
  copied            share of the body's paragraphs that carry tool-output formatting ("Source: URL" lines, "## [T](URL)"
                    page headings, numbered "[T](URL)" search entries, "# Synthesis Report"/"# Search Summary"):
                    observations pasted, not synthesised.
  language_match    1 if protocol.detect_language(report) == detect_language(question), else 0.
Mapped onto the four RACE dimensions (so every judge speaks the same JSON), with topical = (1 + on_topic) / 2 (a
report whose sections are all off the question keeps half of what it says):
  comprehensiveness     = (question_coverage + evidence_coverage + length) / 3 x topical
  insight               = (citation_support + min(1, supported distinct sources / 4)) / 2 x topical
  instruction_following = (language_match + question_coverage) / 2 x topical
  readability           = structure x (1 - copied)
  overall               = mean of the four, halved when the language does not match the question's.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

from oresearcher import protocol
from synth import text as text_lib
from synth.llm import LLMError
from synth.tools.search import ToolError
from synth.tools.ssrf import BlockedURL

DIMENSIONS = ("comprehensiveness", "insight", "instruction_following", "readability")
# A line that is only a references title ("## References", "**Sources:**", "参考文献"), not prose starting so.
_REFERENCES_HEADING = re.compile(r"^[ \t]*(?:#+[ \t]*|\*\*)?(?:references|sources|bibliography|参考文献|参考资料|引用)"
                                 r"[ \t]*[:：]?[ \t]*(?:\*\*)?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_CONCLUSION = re.compile(r"\b(conclusion|conclusions|in summary|to summari[sz]e|to conclude|overall|in short)\b|"
                         r"总结|结论|综上", re.IGNORECASE)
# "claim. [1] Next" -> "claim [1]. Next": a marker after the full stop still belongs to the sentence before it.
_MARKER = re.compile(r"\[\d+(?:\s*[,，、;\-–]\s*\d+)*\]")
_MARKER_AFTER_STOP = re.compile(r"([.!?。！？])((?:\s*%s)+)" % _MARKER.pattern)
_URL = re.compile(r"https?://[^\s)\]>|\"']+")
_BLANK_LINE = re.compile(r"\n\s*\n")
_SECTION_START = re.compile(r"\n(?=## |\d+\. \[)")   # a page section "## [T](URL)" or a search entry "n. [T](URL)"
MIN_NOVELTY = 1 / 3   # a cited sentence adds to length only when a third of its content words are new
# What tool output looks like (protocol.render_search, the crawl's page sections): pasted, not written.
_TOOL_FORMAT = re.compile(r"^\s*(?:Source:\s*https?://|#+\s*\[[^\]]*\]\(https?://|\d+\.\s*\[[^\]]*\]\(https?://|"
                          r"#\s*(?:Synthesis Report|Search Summary)\b|Found \d+ results)", re.MULTILINE)


@dataclasses.dataclass
class JudgeResult:
    """abstained + reason, or scores (each 0..1) + overall (0..1); judge names who scored."""

    abstained: bool
    reason: str | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    overall: float | None = None
    judge: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        if self.abstained:
            return {"abstained": True, "reason": self.reason, "judge": self.judge}
        return {"abstained": False, "scores": self.scores, "overall": self.overall, "judge": self.judge,
                "details": self.details}


def trajectory_text(trajectory: Any) -> str:
    """The protocol text of a trajectory given as text, a record {"messages": [...]} or a message list."""
    if trajectory is None:
        return ""
    if isinstance(trajectory, str):
        return trajectory
    messages = trajectory.get("messages", []) if isinstance(trajectory, dict) else trajectory
    return "\n".join(m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def split_report(report: str) -> tuple[str, str]:
    """(body, references section) at the last References heading (or at the first reference entry)."""
    headings = list(_REFERENCES_HEADING.finditer(report))
    if headings:
        cut = headings[-1].start()
        return report[:cut], report[cut:]
    entry = re.search(r"^\s*\[\d+\]\.?\s+https?://", report, re.MULTILINE)
    return (report[: entry.start()], report[entry.start():]) if entry else (report, "")


def _paragraphs(body: str) -> list[str]:
    return [p.strip() for p in _BLANK_LINE.split(body) if p.strip()]


def _observation_sections(trajectory: str) -> tuple[list[str], dict[str, dict[str, None]]]:
    """(gathered URLs in order, URL -> the distinct page sections and search entries naming it, in order)."""
    urls: list[str] = []
    evidence: dict[str, dict[str, None]] = {}
    for span in protocol.parse(trajectory):
        if span.tag != "observation":
            continue
        # Each page section of a Synthesis Report starts with "## [Title](URL)"; search entries with "n. [T](URL)".
        for chunk in _SECTION_START.split(span.body):
            for url in _URL.findall(chunk):
                url = url.rstrip(".,;")
                if url not in evidence:
                    urls.append(url)
                    evidence[url] = {}
                evidence[url][chunk] = None
    return urls, evidence


class HeuristicJudge:
    """The embedded rubric judge (module docstring). tools: a `Tools` to read cited pages (None: observations only)."""

    name = "heuristic"

    def __init__(self, tools=None, *, support_threshold: float = 0.6, target_words: int = 400):
        self.tools = tools
        self.support_threshold = support_threshold
        self.target_words = target_words

    async def _page_text(self, url: str) -> str:
        if self.tools is None:
            return ""
        try:
            page = await self.tools.fetch_page(url)
        except (ToolError, BlockedURL):  # an unreadable page supports nothing
            return ""
        return f"{page.title}\n{page.text}"

    def _structure(self, body: str, references: list, cited: list[int]) -> tuple[float, dict]:
        headings, prose, prose_before_first_section = [], [], 0
        for paragraph in _paragraphs(body):
            lines = paragraph.split("\n")
            for line in lines:
                if line.lstrip().startswith("#"):
                    level = len(line.lstrip()) - len(line.lstrip().lstrip("#"))
                    headings.append((level, line.strip("# ").strip()))
            text = " ".join(line for line in lines if not line.lstrip().startswith("#")).strip()
            if text:
                prose.append(text)
                if not any(level >= 2 for level, _ in headings):
                    prose_before_first_section += 1
        sections = [title for level, title in headings if level >= 2]
        checks = {
            "introduction": prose_before_first_section > 0
            or bool(sections and re.search(r"introduction|overview|background|引言|概述", sections[0], re.I)),
            "body": len(prose) >= 3 or len(sections) >= 2,
            "conclusion": bool(sections and _CONCLUSION.search(sections[-1]))
            or any(_CONCLUSION.search(p) for p in prose[-2:]),
            "references": bool(references),
        }
        numbers = {n for n, _, _ in references}
        checks["consistency"] = bool(numbers) and set(cited) == numbers
        return sum(checks.values()) / len(checks), checks

    async def score(self, question: str, report: str, trajectory: Any = None, reference: str | None = None
                    ) -> JudgeResult:
        """Deterministic rubric scores; `reference` is ignored (the heuristic is absolute, not relative)."""
        if not report or not report.strip():
            return JudgeResult(abstained=True, reason="empty report: nothing to judge", judge=self.name)
        body, references_text = split_report(report)
        references = protocol.parse_references(references_text or report)
        url_of = {n: url for n, url, _ in references}
        cited = protocol.cited_numbers(body)
        structure, checks = self._structure(body, references, cited)

        question_words = set(text_lib.content_words(question))
        report_words = set(text_lib.content_words(body))
        question_coverage = len(question_words & report_words) / len(question_words) if question_words else 1.0
        trajectory = trajectory_text(trajectory)
        gathered, evidence = _observation_sections(trajectory)
        cited_urls = [url_of[n] for n in dict.fromkeys(cited) if n in url_of]
        if gathered:
            hit = len(set(cited_urls) & set(gathered))
            evidence_coverage = min(1.0, hit / min(len(gathered), 5))
        else:
            evidence_coverage = min(1.0, len(set(cited_urls)) / 5)

        # Citation support: every (sentence, [n]) pair against the text of the page [n] names. Sentences are
        # numbered by section: -1 the introduction, then one per "##" heading.
        pairs, sections, section = [], [], -1
        for paragraph in _paragraphs(body):
            for sentence in text_lib.sentences(_MARKER_AFTER_STOP.sub(r"\2\1", paragraph)):
                if sentence.startswith("#"):
                    if sentence.startswith("##"):
                        sections.append(sentence.strip("# ").strip())
                        section = len(sections) - 1
                    continue
                for n in dict.fromkeys(protocol.cited_numbers(sentence)):
                    pairs.append((sentence, n, section))
        # With a trajectory, a source it never showed is invented: it supports nothing (and is not read).
        # (A URL ending in ")" is cut short by _URL, so the observations' text is the reference.)
        observed = "\n".join(span.body for span in protocol.parse(trajectory) if span.tag == "observation") \
            if gathered else ""
        readable = {u for u in url_of.values() if not gathered or u in evidence or u in observed}
        needed = sorted({url_of[n] for _, n, _ in pairs if n in url_of} & readable)
        texts = dict(zip(needed, await asyncio.gather(*(self._page_text(u) for u in needed))))
        supports, supported_sources, unsupported = [], set(), []
        best: dict[str, float] = {}            # sentence -> its best support (a sentence counts once in length)
        on_topic_sections: set[int] = set()
        asked = {text_lib.fold(w) for w in question_words}
        words_of: dict[str, set[str]] = {}   # one page is cited by many sentences: read its words once
        for sentence, n, where in pairs:
            url = url_of.get(n)
            if url and url not in words_of:
                # The words of the page and of every observation section naming it (a page's words are
                # remembered: every report citing it asks again).
                words_of[url] = set() if url not in readable else text_lib.content_word_set(
                    texts.get(url, "")).union(*map(text_lib.content_words, evidence.get(url, ())))
            page_words = words_of[url] if url else set()
            claim = _MARKER.sub(" ", sentence)
            overlap = text_lib.overlap(page_words, claim) if page_words else 0.0
            support = min(1.0, overlap / self.support_threshold)
            supports.append(support)
            best[claim.strip()] = max(best.get(claim.strip(), 0.0), support)
            if overlap >= self.support_threshold:
                supported_sources.add(url)
                if asked & {text_lib.fold(w) for w in text_lib.content_words(claim)}:
                    on_topic_sections.add(where)
            else:
                unsupported.append({"n": n, "url": url, "sentence": sentence[:200], "overlap": round(overlap, 3)})
        citation_support = sum(supports) / len(supports) if supports else 0.0
        # Substantive words: each cited sentence weighted by its support and by its novelty (the share of its
        # content words that no earlier cited sentence used), so a repeated or reworded sentence adds ~nothing.
        # Words are space-separated tokens, plus one per CJK character (those scripts do not separate words).
        words, used = 0.0, set()
        for claim, weight in best.items():
            vocabulary = set(text_lib.content_words(claim))
            novelty = len(vocabulary - used) / len(vocabulary) if vocabulary else 0.0
            novelty = novelty if novelty >= MIN_NOVELTY else 0.0   # a template with one word changed is a repeat
            used |= vocabulary
            words += (len(claim.split()) + len(re.findall(r"[\u3400-\u9fff]", claim))) * weight * novelty
        length = min(1.0, words / self.target_words)
        # Sections that must carry on-topic support: every "##" section but a closing conclusion and a repeat (a
        # section whose cited sentences all appeared in an earlier one: repeating sections adds nothing).
        claims_of: dict[int, set[str]] = {}
        for sentence, _, where in pairs:
            claims_of.setdefault(where, set()).add(_MARKER.sub(" ", sentence).strip())
        judged, said = [], set()
        for i, title in enumerate(sections):
            claims = claims_of.get(i, set())
            if not (i == len(sections) - 1 and _CONCLUSION.search(title)) and not (claims and claims <= said):
                judged.append(i)
            said |= claims
        on_topic = (len(on_topic_sections & set(judged)) / len(judged) if judged
                    else float(bool(on_topic_sections)))
        paragraphs = _paragraphs(body)
        copied = sum(bool(_TOOL_FORMAT.search(p)) for p in paragraphs) / len(paragraphs) if paragraphs else 0.0

        report_language = protocol.detect_language(body)
        question_language = protocol.detect_language(question)
        language_match = 1.0 if report_language == question_language else 0.0

        topical = (1.0 + on_topic) / 2   # what the report says counts as far as it is about the question
        scores = {
            "comprehensiveness": (question_coverage + evidence_coverage + length) / 3 * topical,
            "insight": (citation_support + min(1.0, len(supported_sources) / 4)) / 2 * topical,
            "instruction_following": (language_match + question_coverage) / 2 * topical,
            "readability": structure * (1.0 - copied),
        }
        overall = sum(scores.values()) / len(scores) * (1.0 if language_match else 0.5)
        details = {
            "structure": round(structure, 4), "structure_checks": checks,
            "question_coverage": round(question_coverage, 4), "evidence_coverage": round(evidence_coverage, 4),
            "citation_support": round(citation_support, 4), "length": round(length, 4),
            "on_topic": round(on_topic, 4), "sections": len(judged), "copied": round(copied, 4),
            "language_match": language_match, "language": {"report": report_language, "question": question_language},
            "citations": len(pairs), "supported_citations": len(pairs) - len(unsupported),
            "unsupported": unsupported[:20], "gathered_urls": len(gathered),
            "note": "heuristic stand-in for an LLM judge: measures structure and grounding, not insight",
        }
        return JudgeResult(abstained=False, scores={k: round(v, 4) for k, v in scores.items()},
                           overall=round(overall, 4), judge=self.name, details=details)


RUBRIC_PROMPT = """You are a strict reviewer of deep-research reports. Score the report for the question on four \
dimensions, each an integer or decimal from 0 (worst) to 10 (best):
- comprehensiveness: breadth and depth of coverage of everything the question asks;
- insight: analysis, causes, implications and original synthesis beyond restating sources;
- instruction_following: answers exactly what was asked, in the question's language and requested form;
- readability: clear structure, flow, formatting and precise language.
Answer with ONLY a JSON object, no other text:
{"comprehensiveness": <0-10>, "insight": <0-10>, "instruction_following": <0-10>, "readability": <0-10>, \
"justification": "<one sentence>"}"""


def parse_rubric(text: str, keys: tuple[str, ...] = DIMENSIONS) -> dict[str, float] | str:
    """The 0-10 scores named `keys` (the four RACE dimensions by default) from a judge answer, or a string
    saying why they cannot be read."""
    cleaned = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    start, end = cleaned.find("{"), cleaned.rfind("}")
    if start < 0 or end <= start:
        return f"no JSON object in the judge answer: {text[:120]!r}"
    try:
        data = json.loads(cleaned[start: end + 1])
    except json.JSONDecodeError as error:
        return f"invalid JSON in the judge answer ({error.msg}): {text[:120]!r}"
    if not isinstance(data, dict):
        return "judge answer is not a JSON object"
    scores = {}
    for dimension in keys:
        value = data.get(dimension)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return f"judge answer lacks a numeric {dimension!r} (got {value!r})"
        if not 0.0 <= value <= 10.0:
            return f"judge answer {dimension}={value} is outside 0-10"
        scores[dimension] = value
    return scores


class LLMJudge:
    """RACE-style rubric judge on an OpenAI-compatible LLM (an `LLMClient`).

    Without a reference: scores = each dimension / 10, overall = their mean. With a reference report, both are
    scored and every dimension becomes T / (T + R) (0.5 when both are 0); overall = mean T / (mean T + mean R),
    the reference-relative score of RACE. Abstains (never scores 0) when the LLM fails or answers unreadably.
    """

    def __init__(self, llm, *, temperature: float = 0.0, max_tokens: int = 400, max_report_chars: int = 60000):
        self.llm = llm
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_report_chars = max_report_chars

    @property
    def name(self) -> str:
        return f"llm:{self.llm.name}"

    async def _rate(self, question: str, report: str, accounting=None) -> dict[str, float] | str:
        messages = [{"role": "system", "content": RUBRIC_PROMPT},
                    {"role": "user", "content": f"Question:\n{question}\n\nReport:\n{report[: self.max_report_chars]}"}]
        try:
            result = await self.llm.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens,
                                         accounting=accounting)
        except LLMError as error:
            return f"judge LLM failed: {error.reason}"
        return parse_rubric(result.text)

    async def score(self, question: str, report: str, trajectory: Any = None, reference: str | None = None,
                    *, accounting=None) -> JudgeResult:
        if not report or not report.strip():
            return JudgeResult(abstained=True, reason="empty report: nothing to judge", judge=self.name)
        rated = await self._rate(question, report, accounting)
        if isinstance(rated, str):
            return JudgeResult(abstained=True, reason=rated, judge=self.name)
        if reference is None:
            scores = {d: rated[d] / 10 for d in DIMENSIONS}
            return JudgeResult(abstained=False, scores=scores, overall=sum(scores.values()) / len(scores),
                               judge=self.name, details={"raw": rated})
        rated_reference = await self._rate(question, reference, accounting)
        if isinstance(rated_reference, str):
            return JudgeResult(abstained=True, reason=f"reference report: {rated_reference}", judge=self.name)
        scores = {d: (rated[d] / (rated[d] + rated_reference[d]) if rated[d] + rated_reference[d] else 0.5)
                  for d in DIMENSIONS}
        target = sum(rated.values()) / len(DIMENSIONS)
        base = sum(rated_reference.values()) / len(DIMENSIONS)
        overall = target / (target + base) if target + base else 0.5
        return JudgeResult(abstained=False, scores=scores, overall=overall, judge=self.name,
                           details={"raw": rated, "reference_raw": rated_reference})

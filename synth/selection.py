"""How the funnel scores a candidate: the report (RACE's four dimensions) AND the trajectory on the paper's
selection criteria (PAPER §4): coherence of the reasoning, appropriate tool use, grounding in the evidence.

    verdict = await score_candidate(judge, question, report, trajectory_text, accounting=acct)
    verdict.overall      # mean of the report's overall and the trajectory criteria's mean (0..1)
    verdict.scores       # the four RACE dimensions and coherence, tool_use, grounding

With the LLM judge, one request carries the question, an abridged trajectory (every think, plan, tool call and
answer; observations cut to their first lines) and the report, and asks for all seven scores. With the heuristic
judge (offline) the trajectory criteria are measured:
  coherence  (share of tool calls directly preceded by a think or plan + share of sub-questions answered) / 2;
  tool_use   (share of crawled URLs that an earlier observation listed, i.e. reading what was found + share of
             tool calls that are not repeats) / 2;
  grounding  the report's citation support (HeuristicJudge's citation_support).
A judge that cannot score abstains with its reason; the funnel decides what that means.
"""
from __future__ import annotations

import re

from oresearcher import protocol
from synth.judge import DIMENSIONS, JudgeResult, LLMJudge, parse_rubric
from synth.llm import LLMError

CRITERIA = ("coherence", "tool_use", "grounding")
_URL = re.compile(r"https?://[^\s)\]>|\"']+")

TRAJECTORY_PROMPT = """You are a strict reviewer of deep-research trajectories. You see a question, the \
researcher's trajectory (its reasoning, tool calls and abridged tool observations) and its final report. Score \
each from 0 (worst) to 10 (best):
- coherence: the reasoning steps follow from each other and from what the tools returned, toward the question;
- tool_use: searches are well aimed, the pages read are the promising ones found, no pointless repeats;
- grounding: every claim of the report is supported by an observation in the trajectory, citations included;
- comprehensiveness, insight, instruction_following, readability: of the report, as in a report review.
Answer with ONLY a JSON object, no other text:
{"coherence": <0-10>, "tool_use": <0-10>, "grounding": <0-10>, "comprehensiveness": <0-10>, "insight": <0-10>, \
"instruction_following": <0-10>, "readability": <0-10>, "justification": "<one sentence>"}"""


def abridge(text: str, *, observation_chars: int = 400, element_chars: int = 1500, max_chars: int = 40000) -> str:
    """The trajectory for a judge: every element, observations cut to `observation_chars`, others to
    `element_chars`; the middle dropped (marked) when the whole exceeds `max_chars`."""
    parts = []
    for span in protocol.parse(text):
        if span.tag is None or span.tag == "suggested_answer":
            continue
        limit = observation_chars if span.tag == "observation" else element_chars
        body = span.body.strip()
        body = body if len(body) <= limit else body[:limit] + " [...]"
        parts.append(f"<{span.tag}>{body}</{span.tag}>")
    out = "\n".join(parts)
    if len(out) > max_chars:
        half = max_chars // 2
        out = out[:half] + "\n[... middle of the trajectory omitted ...]\n" + out[-half:]
    return out


def trajectory_criteria(text: str, citation_support: float) -> dict[str, float]:
    """The heuristic judge's coherence, tool_use and grounding of a trajectory (module docstring), each 0..1."""
    spans = [s for s in protocol.parse(text) if s.tag is not None]
    calls = reasoned = answered = subtasks = 0
    seen_urls: set[str] = set()
    crawled = crawled_found = 0
    bodies: list[str] = []
    for i, span in enumerate(spans):
        if span.tag == "subtask":
            subtasks += 1
        elif span.tag == "subtask_answer":
            answered += 1
        elif span.tag == "observation":
            seen_urls.update(u.rstrip(".,;") for u in _URL.findall(span.body))
        elif span.tag in protocol.TOOL_TAGS:
            calls += 1
            reasoned += i > 0 and spans[i - 1].tag in ("think", "plan")
            bodies.append(f"{span.tag}:{' '.join(span.body.split())}")
            if span.tag == "crawl_page":
                call = protocol.parse_tool_call("crawl_page", span.body)
                for url in getattr(call, "urls", []):
                    crawled += 1
                    crawled_found += url in seen_urls
    coherence = ((reasoned / calls if calls else 0.0) + min(1.0, answered / max(1, subtasks))) / 2
    tool_use = ((crawled_found / crawled if crawled else 0.0) + (len(set(bodies)) / len(bodies) if bodies else 0.0)) / 2
    return {"coherence": coherence, "tool_use": tool_use, "grounding": citation_support}


def _combine(report_scores: dict, criteria: dict, judge: str, details: dict) -> JudgeResult:
    report_overall = sum(report_scores[d] for d in DIMENSIONS) / len(DIMENSIONS)
    trajectory_overall = sum(criteria[c] for c in CRITERIA) / len(CRITERIA)
    scores = {**{d: round(report_scores[d], 4) for d in DIMENSIONS}, **{c: round(criteria[c], 4) for c in CRITERIA}}
    return JudgeResult(abstained=False, scores=scores, overall=round((report_overall + trajectory_overall) / 2, 4),
                       judge=judge, details={**details, "report_overall": round(report_overall, 4),
                                             "trajectory_overall": round(trajectory_overall, 4)})


async def score_candidate(judge, question: str, report: str, trajectory: str, *, accounting=None) -> JudgeResult:
    """The report and the trajectory judged together (module docstring)."""
    if not report or not report.strip():
        return JudgeResult(abstained=True, reason="empty report: nothing to judge", judge=judge.name)
    if isinstance(judge, LLMJudge):
        messages = [{"role": "system", "content": TRAJECTORY_PROMPT},
                    {"role": "user", "content": f"Question:\n{question}\n\nTrajectory:\n{abridge(trajectory)}\n\n"
                                                f"Report:\n{report[: judge.max_report_chars]}"}]
        try:
            result = await judge.llm.chat(messages, temperature=judge.temperature, max_tokens=judge.max_tokens,
                                          accounting=accounting)
        except LLMError as error:
            return JudgeResult(abstained=True, reason=f"judge LLM failed: {error.reason}", judge=judge.name)
        rated = parse_rubric(result.text, DIMENSIONS + CRITERIA)
        if isinstance(rated, str):
            return JudgeResult(abstained=True, reason=rated, judge=judge.name)
        return _combine({d: rated[d] / 10 for d in DIMENSIONS}, {c: rated[c] / 10 for c in CRITERIA},
                        judge.name, {"raw": rated})
    verdict = await judge.score(question, report, trajectory=trajectory)
    if verdict.abstained:
        return verdict
    criteria = trajectory_criteria(trajectory, verdict.details.get("citation_support", 0.0))
    return _combine(verdict.scores, criteria, judge.name, {"report": verdict.details})

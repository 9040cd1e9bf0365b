"""DeepResearchGym-style key-point recall/contradiction (KPR/KPC) and citation precision/recall.

Key points are short gold statements a good report should cover. Each key point is labelled against the
report as `supported`, `omitted` or `contradicted`:

    KPR = mean over reports of  #supported    / #key points       (x100)
    KPC = mean over reports of  #contradicted / #key points       (x100)

Citation quality looks at claims, i.e. substantive body sentences (>= `min_claim_words` words, not headings):

    citation recall    = #claims with at least one citation whose page supports the claim / #claims
    citation precision = #(claim, cited URL) pairs whose page supports the claim / #pairs

Two judges label both: `LLMKeyPoints` (any OpenAI-compatible judge, as DeepResearchGym does), and
`LexicalKeyPoints`, a deterministic, offline stand-in for CPU evaluation. The lexical rules:
  * content words = `synth.text.content_words` (the heuristic judge's own notion: lower-cased, stopwords
    and one-letter tokens out, each CJK character a word);
  * coverage(a, b) = share of a's content words that occur in b;
  * figures (numbers, years) conflict when the key point has some, the compared text has some, and
    they share none (a changed year or figure);
  * a key point is supported when some window of 2 consecutive report sentences (citation markers
    removed) reaches coverage >= `threshold` (0.6) without a figure conflict;
  * it is contradicted when it is not supported and some window reaches the threshold on the key
    point's non-numeric words with a figure conflict; otherwise it is omitted;
  * a page supports a claim when coverage(claim, page) >= `threshold` and the claim's figures, if any,
    share at least one with the page.
It rewards copying the evidence's words, so it ranks extractive systems well; it is a stand-in, named as
such in every table, never a replacement for the LLM judge.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Protocol

from experiments.eval.fact import PageSource, extract_citations, report_body, sentences, strip_markers
from experiments.eval.judge import Judge, JudgeError, JudgeFailure
from synth import text as synth_text

KP_LABELS = ("supported", "omitted", "contradicted")
_WORD = re.compile(r"[^\W_]+", re.U)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def content_words(text: str, *, numbers: bool = True) -> set[str]:
    """The synthesizer's content words (synth.text: stopwords out, CJK characters one word each)."""
    words = set(synth_text.content_words(text))
    return words if numbers else {w for w in words if not w.isdigit()}


def coverage(a: str | set, b: str | set) -> float:
    """Share of a's content words present in b (0 when a has none)."""
    wa = a if isinstance(a, set) else content_words(a)
    wb = b if isinstance(b, set) else content_words(b)
    return len(wa & wb) / len(wa) if wa else 0.0


def numbers_in(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


class KeyPointJudge(Protocol):
    name: str

    async def key_points(self, report: str, points: list[str]) -> list[str]:
        """One label in KP_LABELS per key point."""

    async def supports(self, page: str, claims: list[str]) -> list[bool]:
        """Whether the page supports each claim."""


@dataclass
class LexicalKeyPoints:
    """The offline lexical judge (module docstring)."""
    threshold: float = 0.6
    name: str = "lexical (offline stand-in)"

    def label(self, report: str, point: str) -> str:
        sents = [strip_markers(s) for s in sentences(report_body(report))] or [report]
        windows = [" ".join(sents[i:i + 2]) for i in range(max(1, len(sents) - 1))]
        words, plain, nums = content_words(point), content_words(point, numbers=False), numbers_in(point)
        contradicted = False
        for w in windows:
            other = numbers_in(w)
            conflict = bool(nums and other and not (nums & other))
            if not conflict and coverage(words, w) >= self.threshold:
                return "supported"
            contradicted |= conflict and coverage(plain, w) >= self.threshold
        return "contradicted" if contradicted else "omitted"

    async def key_points(self, report: str, points: list[str]) -> list[str]:
        return [self.label(report, p) for p in points]

    async def supports(self, page: str, claims: list[str]) -> list[bool]:
        page_words, page_nums = content_words(page), numbers_in(page)
        out = []
        for c in claims:
            nums = numbers_in(c)
            conflict = bool(nums and not (nums & page_nums))
            out.append(not conflict and coverage(c, page_words) >= self.threshold)
        return out


KPR_PROMPT = """Below is a research report and numbered key points. For each key point decide whether the report
"supported" it (states it or something equivalent), "omitted" it (does not address it), or "contradicted" it
(states something incompatible with it).

<report>
{report}
</report>

<key_points>
{points}
</key_points>

Answer with a JSON list only, one entry per key point: [{{"idx": 1, "result": "supported"}}, ...]"""

CLAIM_PROMPT = """Below is a reference page and numbered claims. For each claim answer true if the page supports
it (fully or in part; rounded figures are fine) and false otherwise.

<reference>
{page}
</reference>

<claims>
{claims}
</claims>

Answer with a JSON list only: [{{"idx": 1, "supported": true}}, ...]"""


def _indexed(obj, n: int, key: str, allowed) -> list:
    if not isinstance(obj, list):
        raise JudgeError(f"expected a JSON list of {{idx, {key}}}")
    got = {}
    for item in obj:
        try:
            idx, value = int(item["idx"]), item[key]
        except (KeyError, TypeError, ValueError):
            raise JudgeError(f"each entry needs 'idx' and '{key}'") from None
        if isinstance(value, str):
            value = value.strip().lower()
        if value not in allowed:
            raise JudgeError(f"entry {idx}: {key}={value!r} is not one of {allowed}")
        got[idx] = value
    missing = [i for i in range(1, n + 1) if i not in got]
    if missing:
        raise JudgeError(f"no answer for item(s) {missing}")
    return [got[i] for i in range(1, n + 1)]


@dataclass
class LLMKeyPoints:
    """Key points and claim support judged by an OpenAI-compatible LLM."""
    judge: Judge
    max_chars: int = 30000

    @property
    def name(self) -> str:
        return self.judge.name

    async def key_points(self, report: str, points: list[str]) -> list[str]:
        listing = "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))
        prompt = KPR_PROMPT.format(report=report[:self.max_chars], points=listing)
        return await self.judge.ask(prompt, lambda o: _indexed(o, len(points), "result", KP_LABELS),
                                    what="key points")

    async def supports(self, page: str, claims: list[str]) -> list[bool]:
        listing = "\n".join(f"{i}. {c}" for i, c in enumerate(claims, 1))
        prompt = CLAIM_PROMPT.format(page=page[:self.max_chars], claims=listing)
        return await self.judge.ask(prompt, lambda o: _indexed(o, len(claims), "supported", (True, False)),
                                    what="claim support")


# ------------------------------------------------------------------------------------------------ scoring
async def kpr_report(report: str, points: list[str], judge: KeyPointJudge) -> dict:
    """Key-point labels of one report; raises JudgeFailure when an LLM judge fails."""
    if not points:
        raise ValueError("a question without key points cannot be scored for KPR; fix the eval set")
    labels = await judge.key_points(report or "", points)
    n = len(points)
    return {"kpr": labels.count("supported") / n, "kpc": labels.count("contradicted") / n, "labels": labels}


async def citation_scores(report: str, pages: PageSource, judge: KeyPointJudge, *,
                          min_claim_words: int = 6) -> dict:
    """Citation precision and recall of one report; unfetchable pages count as not supporting."""
    claims = [c for c in sentences(report_body(report)) if len(_WORD.findall(strip_markers(c))) >= min_claim_words]
    pairs, _ = extract_citations(report)
    by_url: dict[str, list[str]] = {}
    for p in pairs:
        by_url.setdefault(p.url, []).append(p.statement)
    supported_pairs: set[tuple[str, str]] = set()
    for url, statements in by_url.items():
        page = await pages.page_text(url)
        if page is None:
            continue
        for s, ok in zip(statements, await judge.supports(page, statements)):
            if ok:
                supported_pairs.add((s, url))
    backed = {" ".join(s.split()) for s, _ in supported_pairs}
    recall_hits = sum(" ".join(strip_markers(c).split()) in backed for c in claims)
    return {"claims": len(claims), "pairs": len(pairs), "supported_pairs": len(supported_pairs),
            "citation_precision": len(supported_pairs) / len(pairs) if pairs else 0.0,
            "citation_recall": recall_hits / len(claims) if claims else 0.0}


async def run_kpr(rows: list[dict], key_points: dict[str, list[str]], judge: KeyPointJudge,
                  pages: PageSource | None = None, concurrency: int = 8) -> dict:
    """KPR/KPC (and citation precision/recall when `pages` is given) over output rows {id, article}.

    Rows whose judge call fails are dropped and counted, never scored 0.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(row):
        rid = str(row["id"])
        async with gate:
            try:
                out = {"id": rid, **await kpr_report(row.get("article") or "", key_points[rid], judge)}
                if pages is not None:
                    out.update(await citation_scores(row.get("article") or "", pages, judge))
                return out
            except JudgeFailure as err:
                return {"id": rid, "dropped": str(err)}

    missing = [str(r["id"]) for r in rows if str(r["id"]) not in key_points]
    if missing:
        raise ValueError(f"rows {missing[:5]} have no gold key points; check the question set ids")
    results = await asyncio.gather(*(one(r) for r in rows))
    scored = [r for r in results if "dropped" not in r]
    summary = {"scored": len(scored), "dropped": len(results) - len(scored)}
    keys = ["kpr", "kpc"] + (["citation_precision", "citation_recall"] if pages is not None else [])
    for key in keys:
        summary[key] = 100 * sum(r[key] for r in scored) / len(scored) if scored else None
    return {"judge": judge.name, "summary": summary, "reports": results}

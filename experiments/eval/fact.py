"""FACT (DeepResearch Bench): are a report's citations supported by the pages they cite?

1. Extract (statement, URL) pairs from the report itself: every body sentence carrying inline citations
   ` [n] ` is a statement; each n is resolved through the report's References list ("[n]. URL - Title",
   parsed by `oresearcher.protocol`). Citation markers are stripped from the statement; exact duplicate
   (statement, URL) pairs are merged. A marker with no reference entry is counted as `dangling`.
2. Fetch each cited page once through the synth crawl cache (`Tools`), so evaluation, synthesis and RL read
   the same page text; an unreachable page is counted as `unfetched` and its statements are not judged.
3. The judge sees one page and the numbered statements citing it, and labels each `supported`,
   `unsupported` or `unknown` (the page has no usable content). A failed judge call drops that page's
   statements and is counted; it is never read as "unsupported".

    citation accuracy    = supported / (supported + unsupported)           over all reports (micro)
    effective citations  = supported / number of reports scored            (a report without citations counts 0)

    python -m experiments.eval.fact --articles ours.jsonl --judge-url URL --judge-model NAME \
        [--synth-config configs/synth.py:PRESET] --out results/fact.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from experiments.eval.judge import Judge, JudgeError, JudgeFailure
from oresearcher import protocol

# A sentence ends at ., !, ? (or the CJK forms) followed by space or end; CJK full stops need no space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
_MARKER = re.compile(r"\s*\[\d+(?:\s*[,，、]\s*\d+)*\]")
# A reference heading: a short line such as "References", "## 7. References (url - title)", "**Sources:**",
# "参考文献：". A body sentence that merely starts with "Sources ..." is longer and is not taken for one.
_REF_HEADING = re.compile(r"^\s*(?:#+\s*)?(?:\d+[.)]\s*)?(?:\*\*)?\s*"
                          r"(?:references|sources|bibliography|参考文献|参考资料|引用)(?P<rest>[^\n]*)$",
                          re.I | re.M)


@dataclass(frozen=True)
class CitedStatement:
    statement: str
    url: str
    number: int


def report_body(report: str) -> str:
    """The report without its reference list (everything before a References heading or list)."""
    end = len(report)
    for m in _REF_HEADING.finditer(report):
        if len(m.group("rest").strip(" :：*")) <= 20:
            end = m.start()
            break
    refs = protocol.parse_references(report)
    if refs:  # a reference list without a heading: cut at its first entry line
        first = re.search(rf"^\s*\[{refs[0][0]}\]\.?\s+\S+", report, re.M)
        if first and first.start() < end:
            end = first.start()
    return report[:end]


def sentences(text: str) -> list[str]:
    """Body sentences, one per line-or-sentence; a piece made only of markers joins the sentence before it."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip().lstrip("-*#>").strip()
        if not line:
            continue
        for piece in _SENTENCE_END.split(line):
            piece = piece.strip()
            if not piece:
                continue
            if out and not _MARKER.sub("", piece).strip(" .。"):
                out[-1] = out[-1] + " " + piece
            else:
                out.append(piece)
    return out


def strip_markers(sentence: str) -> str:
    """The sentence without its inline citation markers."""
    return _MARKER.sub("", sentence).strip()


def extract_citations(report: str) -> tuple[list[CitedStatement], int]:
    """(statement, URL) pairs of a report, deduplicated in order, and the count of dangling markers."""
    urls = {n: url for n, url, _ in protocol.parse_references(report)}
    pairs, seen, dangling = [], set(), 0
    for sent in sentences(report_body(report)):
        numbers = protocol.cited_numbers(sent)
        if not numbers:
            continue
        statement = strip_markers(sent)
        if not statement:
            continue
        for n in dict.fromkeys(numbers):
            if n not in urls:
                dangling += 1
                continue
            key = (" ".join(statement.lower().split()), urls[n])
            if key not in seen:
                seen.add(key)
                pairs.append(CitedStatement(statement, urls[n], n))
    return pairs, dangling


# --------------------------------------------------------------------------------------------- page text
class PageSource(Protocol):
    async def page_text(self, url: str) -> str | None:
        """The page's text, or None when it cannot be fetched."""


class ToolsPages:
    """Raw pages through synth's `Tools.fetch_page` (its crawl backend and SQLite cache), memoised per URL."""

    def __init__(self, tools):
        self.tools = tools
        self._memo: dict[str, asyncio.Future] = {}

    async def _fetch(self, url: str) -> str | None:
        from synth.tools import ToolError
        from synth.tools.ssrf import BlockedURL

        try:
            page = await self.tools.fetch_page(url)
        except (ToolError, BlockedURL):
            return None
        return page.text if page.text.strip() else None

    async def page_text(self, url: str) -> str | None:
        if url not in self._memo:
            self._memo[url] = asyncio.ensure_future(self._fetch(url))
        return await self._memo[url]


# ---------------------------------------------------------------------------------------------- judging
SUPPORT_PROMPT = """Below is a reference page and numbered statements that cite it. For each statement decide:
"supported" if the facts or figures it states can be found, fully or in part, in the reference (rounded figures
are fine); "unsupported" if none of its facts or figures are in the reference; "unknown" for every statement
if the reference has no usable content (an error page, a login wall, an empty page).

<reference>
{page}
</reference>

<statements>
{statements}
</statements>

Answer with a JSON list only, one entry per statement: [{{"idx": 1, "result": "supported"}}, ...]"""

LABELS = ("supported", "unsupported", "unknown")


def parse_support(obj, n: int) -> list[str]:
    """Labels for statements 1..n from the judge's list; raises JudgeError on a missing index or label."""
    if not isinstance(obj, list):
        raise JudgeError("expected a JSON list of {idx, result}")
    labels: dict[int, str] = {}
    for item in obj:
        try:
            idx, label = int(item["idx"]), str(item["result"]).strip().lower()
        except (KeyError, TypeError, ValueError):
            raise JudgeError("each entry needs 'idx' and 'result'") from None
        if label not in LABELS:
            raise JudgeError(f"statement {idx}: label {label!r} is not one of {LABELS}")
        labels[idx] = label
    missing = [i for i in range(1, n + 1) if i not in labels]
    if missing:
        raise JudgeError(f"no label for statement(s) {missing}")
    return [labels[i] for i in range(1, n + 1)]


async def judge_page(judge: Judge, page: str, statements: list[str], max_page_chars: int) -> list[str]:
    listing = "\n".join(f"{i}. {s}" for i, s in enumerate(statements, 1))
    prompt = SUPPORT_PROMPT.format(page=page[:max_page_chars], statements=listing)
    return await judge.ask(prompt, lambda obj: parse_support(obj, len(statements)), what="support check")


async def fact_report(row: dict, pages: PageSource, judge: Judge, *, max_page_chars: int = 30000,
                      gate: asyncio.Semaphore | None = None) -> dict:
    """FACT counts for one output row {id, prompt, article}."""
    pairs, dangling = extract_citations(row.get("article") or "")
    by_url: dict[str, list[str]] = {}
    for p in pairs:
        by_url.setdefault(p.url, []).append(p.statement)
    counts = {"supported": 0, "unsupported": 0, "unknown": 0, "unfetched": 0, "judge_failed": 0}
    judged_pairs = []
    gate = gate or asyncio.Semaphore(8)

    async def one(url, statements):
        async with gate:
            page = await pages.page_text(url)
            if page is None:
                counts["unfetched"] += len(statements)
                return
            try:
                labels = await judge_page(judge, page, statements, max_page_chars)
            except JudgeFailure:
                counts["judge_failed"] += len(statements)
                return
        for s, label in zip(statements, labels):
            counts[label] += 1
            judged_pairs.append({"statement": s, "url": url, "result": label})

    await asyncio.gather(*(one(u, s) for u, s in by_url.items()))
    return {"id": row.get("id"), "pairs": len(pairs), "dangling": dangling, **counts, "judged": judged_pairs}


def summarize(reports: list[dict]) -> dict:
    supported = sum(r["supported"] for r in reports)
    judged = supported + sum(r["unsupported"] for r in reports)
    out = {"reports": len(reports),
           "citation_accuracy": 100 * supported / judged if judged else None,
           "effective_citations": supported / len(reports) if reports else None}
    for key in ("pairs", "supported", "unsupported", "unknown", "unfetched", "judge_failed", "dangling"):
        out[key] = sum(r[key] for r in reports)
    return out


async def run_fact(rows: list[dict], pages: PageSource, judge: Judge, *, concurrency: int = 8,
                   max_page_chars: int = 30000) -> dict:
    gate = asyncio.Semaphore(concurrency)
    reports = await asyncio.gather(*(fact_report(r, pages, judge, max_page_chars=max_page_chars, gate=gate)
                                     for r in rows))
    return {"judge": judge.name, "summary": summarize(list(reports)), "reports": list(reports)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FACT citation accuracy and effective citations of reports.")
    ap.add_argument("--articles", required=True, help="JSONL {id, prompt, article}")
    ap.add_argument("--judge-url", required=True)
    ap.add_argument("--judge-model", required=True)
    ap.add_argument("--api-key-env", default="", help="name of the environment variable holding the key")
    ap.add_argument("--synth-config", help="synth config file[:preset] whose crawl backend and cache fetch the "
                    "cited pages (default: the embedded tools; real reports need crawl.backend='http')")
    ap.add_argument("--cache-dir", help="tool cache directory (default: the config's, else ~/.cache/oresearcher)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from experiments.eval.race import read_jsonl
    from experiments.run_agent import load_synth_config
    from synth.tools import Tools

    judge = Judge.from_endpoint(args.judge_url, args.judge_model, api_key_env=args.api_key_env)
    tools = Tools.from_config(load_synth_config(args.synth_config, args.cache_dir))
    result = asyncio.run(run_fact(read_jsonl(args.articles), ToolsPages(tools), judge,
                                  concurrency=args.concurrency))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    s = result["summary"]
    acc = f"{s['citation_accuracy']:.2f}%" if s["citation_accuracy"] is not None else "n/a"
    print(f"FACT ({result['judge']}): {s['reports']} reports, {s['pairs']} statement-URL pairs; "
          f"citation accuracy {acc}; effective citations {s['effective_citations']:.2f}; "
          f"unknown {s['unknown']}, unfetched {s['unfetched']}, judge failures {s['judge_failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

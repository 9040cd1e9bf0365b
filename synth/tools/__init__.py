"""The two research tools, web_search and crawl_page, behind one facade shared by synthesis, RL and evaluation.

    tools = Tools.from_config(cfg)                      # embedded: local BM25 search + local corpus pages
    result = await tools.web_search(["q1", "q2"], num=10)
    result.observation   # "# Search Summary ..." (protocol.render_search), ready for protocol.observation()
    result.ok, result.error, result.hits
    result = await tools.crawl_page(["https://en.wikipedia.org/wiki/Photosynthesis"], goal="how plants fix CO2")
    result.observation   # "# Synthesis Report ..." with one "## [Title](URL)" section per page
    result.pages         # the raw pages (url, title, text) behind the summaries
    result.meta          # {"goal", "goal_source", "summaries": [{"url", "kind", "fallback"?}]}: how each page
                         # was summarised (an LLM failure is said here, never inside the observation)

Page summaries (tools.crawl.summary): "extractive" (the page's sentences that match the goal; offline, the
default), "llm" (a goal-conditioned summary by an LLM: the endpoints of tools.crawl.llm, else the openai
teacher's), "auto" (the LLM when one is configured). The goal is the call's goal=, else the researcher's think
and plan just before the call (`context`). When the LLM fails or answers nothing, the extractive summary is
used and the result's meta says so.

Failures are never hidden and never replaced by made-up content: a query or URL that fails adds an explicit
protocol.render_error section to the observation, `ok` becomes False and `error` names every failure (the
workflow copies it into the trajectory's meta). Successful parts of the same call are still returned.
Every result is cached (tools/cache.py), so a page crawled during synthesis is free during RL and judging.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
from typing import Any

from oresearcher import protocol
from oresearcher.protocol import SearchHit
from synth.corpus import Page
from synth.llm import LLMError
from synth.tools.cache import ToolCache, cache_dir
from synth.tools.crawl import HttpCrawl, LocalCrawl, ReaderCrawl, extractive_summary, llm_summary, page_section
from synth.tools.search import LocalSearch, SerperSearch, ToolError
from synth.tools.ssrf import BlockedURL

MAX_NUM = 20  # protocol cap on results per query
log = logging.getLogger(__name__)


@dataclasses.dataclass
class ToolResult:
    """What one tool call returns. observation: the protocol body; ok: every part succeeded; error: why not."""

    observation: str
    ok: bool
    error: str | None = None
    hits: list[SearchHit] = dataclasses.field(default_factory=list)
    pages: list[Page] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        """Interface 5's JSON body ({"observation", "ok", "error", "hits"} or "pages", and "meta")."""
        return {"observation": self.observation, "ok": self.ok, "error": self.error,
                "hits": [dataclasses.asdict(h) for h in self.hits],
                "pages": [dataclasses.asdict(p) for p in self.pages], "meta": self.meta}


_THOUGHT = re.compile(r"<(think|plan)>(.*?)(?:</\1>|$)", re.DOTALL)
_LAST_OBSERVATION = re.compile(r".*</observation>", re.DOTALL)


def goal_from_context(context: str, max_chars: int = 1000) -> str:
    """The researcher's think/plan after its last observation in `context` (protocol text), as one line: what
    it was about to read the page for. "" when there is none."""
    tail = _LAST_OBSERVATION.sub("", context or "")
    thoughts = " ".join(" ".join(m.group(2).split()) for m in _THOUGHT.finditer(tail))
    return thoughts[-max_chars:].strip()


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg[key] for dicts and ml_collections ConfigDicts alike, `default` when absent or None."""
    if cfg is None:
        return default
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


async def _gather(coroutines: list) -> list:
    """asyncio.gather(*coroutines, return_exceptions=True), without a task for the usual single call."""
    if len(coroutines) != 1:
        return await asyncio.gather(*coroutines, return_exceptions=True)
    try:
        return [await coroutines[0]]
    except asyncio.CancelledError:
        raise
    except BaseException as error:   # as gather returns it; _unexpected re-raises what is not an Exception
        return [error]


def _unexpected(error: BaseException) -> str:
    """A backend bug must not crash 64 rollouts: log it with its traceback, report it as a tool error."""
    if not isinstance(error, Exception):  # cancellation and interpreter exit go through
        raise error
    log.error("tool backend failed unexpectedly", exc_info=error)
    return f"internal tool error ({type(error).__name__})"


def _summary_llm_spec(root: Any, crawl_cfg: Any):
    """The config section of the page-summary LLM: tools.crawl.llm when it has endpoints, else the teacher's
    section when the teacher is the openai one, else None."""
    spec = _get(crawl_cfg, "llm", None)
    if _get(spec, "endpoints", None):
        return spec
    teacher = _get(root, "teacher", None)
    if _get(teacher, "kind", "") == "openai" and _get(teacher, "endpoints", None):
        return teacher
    return None


class Tools:
    """web_search + crawl_page over pluggable backends, with caching and error observations.

    search: a backend with `async search(query, num) -> list[SearchHit]` and a `name`;
    crawl: a backend with `async fetch(url) -> Page` and a `name`;
    llm: an LLMClient for goal-conditioned summaries, or None for the extractive summary;
    summary_chars: length budget of one page's extractive summary; max_urls: URLs read per crawl_page call.
    """

    def __init__(self, search, crawl, *, cache: ToolCache | None = None, llm=None, summary_chars: int = 1500,
                 max_urls: int = 5, owns_llm: bool = False, summary_tokens: int = 600):
        self.search_backend = search
        self.crawl_backend = crawl
        self.cache = cache if cache is not None else ToolCache(None)
        self.llm = llm
        self.owns_llm = owns_llm   # built here from the config: closed by aclose
        self.summary_tokens = summary_tokens
        self.summary_chars = summary_chars
        self.max_urls = max_urls
        self.stats = {"web_search": 0, "crawl_page": 0, "errors": 0, "summary_fallbacks": 0}

    @classmethod
    def from_config(cls, cfg: Any, *, llm=None) -> Tools:
        """Build from a config (the `tools` section, or a config holding one). Keys, all optional:

        cache_dir ("" -> $ORESEARCHER_CACHE or ~/.cache/oresearcher), cache (True),
        search.backend "local" | "serper", search.serper_url, search.serper_key_envs (env var NAMES, rotated),
        search.timeout; crawl.backend "local" | "http" | "reader", crawl.allow (SSRF allow-list), crawl.timeout,
        crawl.reader_url (default https://r.jina.ai/) and crawl.reader_key_env (default JINA_API_KEY, the NAME
        of the environment variable with the reader's key) for the reader backend,
        crawl.max_bytes, crawl.max_redirects, crawl.summary "auto" | "extractive" | "llm" (auto: the LLM when
        there is one), crawl.llm {endpoints, timeout, max_retries, ...} (the summary LLM; without it `llm`, else
        the openai teacher's endpoints of a full config), crawl.summary_tokens (the summary LLM's token limit,
        600; a reasoning model spends its thinking from it too), crawl.summary_chars, crawl.max_urls.
        """
        root = cfg
        cfg = _get(cfg, "tools", cfg)
        search_cfg, crawl_cfg = _get(cfg, "search", {}), _get(cfg, "crawl", {})
        search_name, crawl_name = _get(search_cfg, "backend", "local"), _get(crawl_cfg, "backend", "local")
        if search_name not in ("local", "serper"):
            raise ValueError(f"tools.search.backend={search_name!r}: choose 'local' or 'serper'")
        if crawl_name not in ("local", "http", "reader"):
            raise ValueError(f"tools.crawl.backend={crawl_name!r}: choose 'local', 'http' or 'reader'")
        summary = _get(crawl_cfg, "summary", "auto")
        if summary not in ("auto", "extractive", "llm"):
            raise ValueError(f"tools.crawl.summary={summary!r}: choose 'auto', 'extractive' or 'llm'")
        owns_llm = False
        if summary != "extractive" and llm is None:
            spec = _summary_llm_spec(root, crawl_cfg)
            if spec is not None:
                from synth.llm import LLMClient

                llm, owns_llm = LLMClient.from_config(spec), True
        if summary == "llm" and llm is None:
            raise ValueError("tools.crawl.summary='llm' needs an LLM: set tools.crawl.llm.endpoints="
                             "[{'base_url': ..., 'model': ...}] (or an openai teacher's teacher.endpoints)")
        directory = cache_dir(_get(cfg, "cache_dir", "") or None)

        if search_name == "local":
            search = LocalSearch(directory)
        else:
            envs = list(_get(search_cfg, "serper_key_envs", ("SERPER_API_KEY",)))
            keys = [os.environ[name] for name in envs if os.environ.get(name)]
            if not keys:
                raise ValueError(f"tools.search.backend='serper' needs an API key: set one of the environment "
                                 f"variables {envs} (config tools.search.serper_key_envs)")
            search = SerperSearch(_get(search_cfg, "serper_url", "https://google.serper.dev/search"), keys,
                                  timeout=float(_get(search_cfg, "timeout", 20.0)))

        if crawl_name == "local":
            crawl = LocalCrawl()
        elif crawl_name == "reader":
            crawl = ReaderCrawl(str(_get(crawl_cfg, "reader_url", "https://r.jina.ai/")),
                                key_env=str(_get(crawl_cfg, "reader_key_env", "JINA_API_KEY")),
                                allow=tuple(_get(crawl_cfg, "allow", ())),
                                timeout=float(_get(crawl_cfg, "timeout", 60.0)))
        else:
            crawl = HttpCrawl(allow=tuple(_get(crawl_cfg, "allow", ())),
                              timeout=float(_get(crawl_cfg, "timeout", 20.0)),
                              max_bytes=int(_get(crawl_cfg, "max_bytes", 2_000_000)),
                              max_redirects=int(_get(crawl_cfg, "max_redirects", 5)))
        cache = ToolCache(directory / "tools.sqlite") if _get(cfg, "cache", True) else ToolCache(None)
        return cls(search, crawl, cache=cache, llm=None if summary == "extractive" else llm,
                   summary_chars=int(_get(crawl_cfg, "summary_chars", 1500)),
                   max_urls=int(_get(crawl_cfg, "max_urls", 5)), owns_llm=owns_llm and summary != "extractive",
                   summary_tokens=int(_get(crawl_cfg, "summary_tokens", 600)))

    # ------------------------------------------------------------------------------------------ web_search
    async def web_search(self, queries: list[str], num: int = 10) -> ToolResult:
        """Search every query (concurrently); hits of all queries in `hits`, in query order."""
        self.stats["web_search"] += 1
        queries = list(dict.fromkeys(q.strip() for q in queries if q and q.strip()))
        if not queries:
            return self._failure("web_search", "no query given; write the call body as query=q1 | q2&num=10")
        num = max(1, min(int(num), MAX_NUM))
        outcomes = await _gather([self._search_one(q, num) for q in queries])
        results: dict[str, list[SearchHit]] = {}
        errors = []
        for query, outcome in zip(queries, outcomes):
            if isinstance(outcome, (ToolError, BlockedURL)):
                errors.append(f"query {query!r}: {outcome}")
            elif isinstance(outcome, BaseException):
                errors.append(f"query {query!r}: {_unexpected(outcome)}")
            else:
                results[query] = outcome
        if not results:
            return self._failure("web_search", "; ".join(errors))
        body = protocol.render_search(results)
        return self._result("web_search", body, errors,
                            hits=[hit for hits in results.values() for hit in hits])

    async def _search_one(self, query: str, num: int) -> list[SearchHit]:
        async def compute():
            return [dataclasses.asdict(h) for h in await self.search_backend.search(query, num)]

        rows, _ = await self.cache.get_or_compute("search", self.search_backend.name,
                                                  {"query": query, "num": num}, compute)
        return [SearchHit(**row) for row in rows]

    # ------------------------------------------------------------------------------------------ crawl_page
    async def crawl_page(self, urls: list[str], goal: str = "", context: str = "") -> ToolResult:
        """Read every URL (concurrently) and summarise each for the goal into one Synthesis Report. context: the
        trajectory text before the call, whose last think/plan is the goal when the call names none."""
        self.stats["crawl_page"] += 1
        urls = list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))
        if not urls:
            return self._failure("crawl_page", "no URL given; write the call body as url=https://a | https://b")
        goal, source = (goal.strip(), "call") if goal and goal.strip() else (goal_from_context(context), "context")
        meta = {"goal": goal, "goal_source": source if goal else "none", "summaries": []}
        skipped = [f"{u}: not read (at most {self.max_urls} URLs per call)" for u in urls[self.max_urls:]]
        urls, errors = urls[: self.max_urls], []
        outcomes = await _gather([self._read_one(u, goal, meta["summaries"]) for u in urls])
        sections, pages = [], []
        for url, outcome in zip(urls, outcomes):
            if isinstance(outcome, (ToolError, BlockedURL)):
                errors.append(str(outcome) if url in str(outcome) else f"{url}: {outcome}")
            elif isinstance(outcome, BaseException):
                errors.append(f"{url}: {_unexpected(outcome)}")
            else:
                page, summary = outcome
                pages.append(page)
                sections.append(page_section(page, summary))
        errors += skipped
        if not pages:
            return self._failure("crawl_page", "; ".join(errors))
        return self._result("crawl_page", protocol.render_synthesis("\n\n".join(sections)), errors, pages=pages,
                            meta=meta)

    async def fetch_page(self, url: str) -> Page:
        """The raw page (cached); raises ToolError / BlockedURL. The judge checks citations with it."""
        async def compute():
            return dataclasses.asdict(await self.crawl_backend.fetch(url))

        row, _ = await self.cache.get_or_compute("page", self.crawl_backend.name, {"url": url}, compute)
        return Page(**row)

    async def _read_one(self, url: str, goal: str, notes: list) -> tuple[Page, str]:
        page = await self.fetch_page(url)
        note: dict = {"url": page.url, "kind": "extractive"}
        if self.llm is not None:
            try:
                summary, _ = await self.cache.get_or_compute(
                    "summary", f"llm:{self.llm.name}", {"url": page.url, "goal": goal},
                    lambda: llm_summary(self.llm, page, goal, max_tokens=self.summary_tokens))
                if summary.strip():
                    notes.append(note | {"kind": "llm"})
                    return page, summary
                note["fallback"] = "the summary LLM answered nothing"
            except LLMError as error:  # the page's own sentences are real content; the LLM's failure is said
                note["fallback"] = f"summary LLM failed: {error.reason[:300]}"
            self.stats["summary_fallbacks"] += 1
        notes.append(note)
        # Extractive summaries take microseconds: recomputing beats a disk round trip.
        summary = extractive_summary(page, goal, self.summary_chars)
        return page, summary

    # ------------------------------------------------------------------------------------------ results
    def _failure(self, tool: str, message: str) -> ToolResult:
        self.stats["errors"] += 1
        return ToolResult(observation=protocol.sanitize(protocol.render_error(tool, message)), ok=False,
                          error=f"{tool}: {message}")

    def _result(self, tool: str, body: str, errors: list[str], **found) -> ToolResult:
        if errors:
            self.stats["errors"] += 1
            body += "\n\n" + protocol.render_error(tool, "; ".join(errors))
        return ToolResult(observation=protocol.sanitize(body), ok=not errors,
                          error=f"{tool}: " + "; ".join(errors) if errors else None, **found)

    async def aclose(self) -> None:
        for backend in (self.search_backend, self.crawl_backend, self.llm if self.owns_llm else None):
            if hasattr(backend, "aclose"):
                await backend.aclose()
        self.cache.close()


__all__ = ["Page", "SearchHit", "ToolCache", "ToolError", "ToolResult", "Tools", "goal_from_context"]

"""web_search backends: `local` (BM25 over the embedded Wikipedia corpus) and `serper` (Serper-compatible API).

Both answer one query at a time with `await backend.search(query, num) -> list[SearchHit]` and raise
`ToolError` with a readable reason when they cannot; the `Tools` facade batches queries, caches results and
renders the observation.
"""
from __future__ import annotations

import asyncio
import os
import pathlib
import random
import re
import shutil
import tempfile
import urllib.parse

import httpx

from oresearcher.protocol import SearchHit
from synth import corpus as corpus_lib
from synth import text as text_lib

SNIPPET_CHARS = 300


class ToolError(Exception):
    """A tool could not answer; the message is shown to the model inside an error observation."""


def _snippet(query: str, body: str, limit: int = SNIPPET_CHARS) -> str:
    """The page's sentences that share most content words with the query, in page order, up to `limit` chars."""
    sentences = text_lib.sentences(body)
    if not sentences:
        return ""
    query_words = set(text_lib.content_words(query))
    shared = [len(query_words & set(text_lib.content_words(s))) for s in sentences]
    ranked = sorted(range(len(sentences)), key=lambda i: (-shared[i], i))
    chosen, used = [], 0
    for i in ranked:
        if chosen and used + len(sentences[i]) > limit:
            break
        chosen.append(i)
        used += len(sentences[i]) + 1
    snippet = " ".join(sentences[i] for i in sorted(chosen))
    return snippet if len(snippet) <= limit else snippet[: limit - 1].rsplit(" ", 1)[0] + "…"


def _title_words(title: str) -> set[str]:
    """A title's content words, its parenthetical qualifier aside ("Western Front (World War I)" -> western, front)."""
    return {text_lib.fold(w) for w in text_lib.content_words(re.sub(r"\s*\(.*?\)\s*$", "", title))}


def _names(query: str) -> set[str]:
    """The query's capitalised words after its first (proper names: "Leeds", "ATP"), folded."""
    tokens = query.split()[1:]
    return {text_lib.fold(w.lower()) for t in tokens for w in text_lib.content_words(t) if t[:1].isupper()}


def title_rank(query_words: set[str], names: set[str], title: str) -> tuple[int, float]:
    """(tier, share) of a page title for a query: tier 1 when the query names the page (every content word of
    a title of two or more words, or a one-word title the query writes as a name: "Leeds", not "matter"), else
    0; share = the title's words found in the query (0 for a one-word title it does not write as a name)."""
    words = _title_words(title)
    if not words:
        return 0, 0.0
    if len(words) == 1 and not words & names:   # a common word of the query ("matter", "play") names nothing
        return 0, 0.0
    found = len(words & query_words)
    return int(found == len(words)), found / len(words)


class LocalSearch:
    """BM25 (bm25s, Lucene variant) over title + text of the embedded corpus, titles boosted.

    The query is reduced to its content words (synth.text: stopwords out), so "how", "what", "each" never match.
    BM25 ranks the pages (the title is indexed twice); then the best `RERANK` are re-ranked by their title: pages
    the query names come first (`title_rank`; longer titles first: "Cellular respiration" before
    "Respiration"), the others by BM25 score x (1 + share of their title words in the query). A question's
    generic words ("compare", "differ") are rare in an encyclopedia, so BM25 alone lets them pull in pages about
    "Accuracy and precision"; the subject's own article is the one a researcher wants.
    The index is built on first use (about a second for 10,033 pages) and saved under
    `<cache_dir>/bm25-wiki-<corpus fingerprint>/`, so later processes load it in milliseconds.
    """

    name = "local-titles"   # names this ranking in the tool cache: a cached result of an older ranking is not reused
    RERANK = 50

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = pathlib.Path(cache_dir)
        self.corpus = corpus_lib.load()
        self._retriever = None
        self._lock = asyncio.Lock()

    def _index_dir(self) -> pathlib.Path:
        return self.cache_dir / f"bm25-wiki-{self.corpus.fingerprint()}"

    def _load_or_build(self):
        import bm25s  # imported lazily: numpy/scipy start-up is paid only by processes that search locally

        directory = self._index_dir()
        if (directory / "params.index.json").is_file():
            return bm25s.BM25.load(str(directory), show_progress=False)
        documents = [f"{p.title} {p.title} {p.text}" for p in self.corpus.pages]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
        # Write to a temporary sibling and rename: a concurrent process never sees a half-written index.
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".bm25-", dir=directory.parent))
        retriever.save(str(staging), show_progress=False)
        try:
            staging.rename(directory)
        except OSError:  # another process finished first; its index is identical
            shutil.rmtree(staging, ignore_errors=True)
        return retriever

    def _retrieve(self, query: str, num: int) -> list[SearchHit]:
        import bm25s

        words = text_lib.content_words(query)
        tokens = bm25s.tokenize([" ".join(words)], stopwords="en", show_progress=False)
        if not tokens.vocab:  # only stopwords or punctuation: nothing to match
            return []
        k = min(max(num, self.RERANK), len(self.corpus))
        indices, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        folded, names = {text_lib.fold(w) for w in words}, _names(query)
        ranked = []
        for position, (index, score) in enumerate(zip(indices[0], scores[0])):
            if score <= 0:  # bm25s fills k slots even when fewer pages match
                continue
            page = self.corpus.pages[int(index)]
            tier, share = title_rank(folded, names, page.title)
            key = (-tier, -len(_title_words(page.title)) if tier else 0, -float(score) * (1 + share), position)
            ranked.append((key, page))
        ranked.sort(key=lambda kp: kp[0])
        return [SearchHit(title=page.title, url=page.url, snippet=_snippet(query, page.text), source="Wikipedia")
                for _, page in ranked[:num]]

    async def search(self, query: str, num: int) -> list[SearchHit]:
        if self._retriever is None:
            async with self._lock:
                if self._retriever is None:
                    self._retriever = await asyncio.to_thread(self._load_or_build)
        return await asyncio.to_thread(self._retrieve, query, num)


class SerperSearch:
    """A Serper-compatible JSON search API: POST {"q", "num"} with header X-API-KEY -> {"organic": [...]}.

    keys: API keys in rotation order (read from environment variables by `Tools.from_config`). A key answered
    with 401/403 (revoked) or 429 (quota) is skipped for this request and the next one is tried; 5xx and
    network errors are retried `retries` times with jittered backoff. Keys never appear in errors.
    """

    name = "serper"

    def __init__(self, url: str, keys: list[str], *, timeout: float = 20.0, retries: int = 2,
                 backoff: float = 0.5, client: httpx.AsyncClient | None = None):
        if not keys:
            raise ValueError("serper search needs at least one API key: set the environment variable named "
                             "in config tools.search.serper_key_envs (e.g. SERPER_API_KEY)")
        self.url = url
        self._keys = list(keys)
        self._next_key = 0
        self.retries = retries
        self.backoff = backoff
        self._client = client or httpx.AsyncClient(timeout=timeout, trust_env=False)

    def __repr__(self) -> str:
        return f"SerperSearch(url={self.url!r}, keys=<{len(self._keys)} redacted>)"

    async def search(self, query: str, num: int) -> list[SearchHit]:
        attempts_left = self.retries + 1
        keys_tried = 0
        last_reason = "no attempt made"
        while attempts_left > 0 and keys_tried < len(self._keys):
            key_index = self._next_key % len(self._keys)
            try:
                response = await self._client.post(self.url, json={"q": query, "num": num},
                                                   headers={"X-API-KEY": self._keys[key_index]})
            except httpx.HTTPError as error:
                last_reason = f"{type(error).__name__} contacting the search API"
                attempts_left -= 1
                await asyncio.sleep(self.backoff * random.uniform(0.5, 1.5))
                continue
            if response.status_code in (401, 403, 429):
                # Rotate: this key is refused or out of quota; later requests start from the next key too.
                last_reason = f"search API refused key #{key_index + 1} (HTTP {response.status_code})"
                self._next_key = key_index + 1
                keys_tried += 1
                continue
            if response.status_code >= 500:
                last_reason = f"search API error HTTP {response.status_code}"
                attempts_left -= 1
                await asyncio.sleep(self.backoff * random.uniform(0.5, 1.5))
                continue
            if response.status_code != 200:
                raise ToolError(f"search API rejected the query (HTTP {response.status_code})")
            try:
                organic = response.json().get("organic", [])
            except (ValueError, AttributeError):
                raise ToolError("search API answered with invalid JSON") from None
            return [_serper_hit(item) for item in organic[:num] if isinstance(item, dict) and item.get("link")]
        raise ToolError(f"web search failed: {last_reason}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _serper_hit(item: dict) -> SearchHit:
    link = str(item["link"])
    return SearchHit(title=str(item.get("title") or link), url=link, snippet=str(item.get("snippet") or ""),
                     date=str(item.get("date") or ""), source=urllib.parse.urlsplit(link).hostname or "")

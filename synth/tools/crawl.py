"""crawl_page backends: `http` (real fetch behind the SSRF guard; HTML main content, PDF and plain text read by
tools/reader.py), `reader` (a Jina-style reader service, tools/reader.py) and `local` (embedded corpus pages),
and the goal-conditioned page summary that becomes the `# Synthesis Report` observation.

Both backends answer `await backend.fetch(url) -> Page` or raise `ToolError` or `ssrf.BlockedURL`; the `Tools`
facade reports either as an error observation.
"""
from __future__ import annotations

import asyncio
import html.parser
import ipaddress
import re
import urllib.parse

import httpx

from synth import corpus as corpus_lib
from synth import text as text_lib
from synth.corpus import Page
from synth.tools.reader import READABLE_TYPES, ReaderCrawl, read_document
from synth.tools.search import ToolError
from synth.tools.ssrf import BlockedURL, Guard

REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "oresearcher-crawler/0.1 (+research tool; respects size and time limits)"


# ---------------------------------------------------------------------------------------------- HTML -> text
class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML document, one line per block element; script/style and friends dropped."""

    HIDDEN = {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head"}
    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
              "article", "header", "footer", "blockquote", "pre", "dd", "dt", "hr", "main", "nav", "aside",
              "figcaption", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden_depth = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        elif tag in self.HIDDEN:
            self._hidden_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in self.HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden_depth:
            self.parts.append(data)


def html_to_text(document: str) -> tuple[str, str]:
    """(title, text): the <title> and the visible text, whitespace collapsed, blank-line-free."""
    parser = _TextExtractor()
    parser.feed(document)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return " ".join("".join(parser.title_parts).split()), "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------------- backends
class LocalCrawl:
    """Pages of the embedded Wikipedia corpus, by their https://en.wikipedia.org/wiki/... address."""

    name = "local"

    def __init__(self):
        self.corpus = corpus_lib.load()

    async def fetch(self, url: str) -> Page:
        page = self.corpus.get(url)
        if page is None:
            raise ToolError(f"{url} is not in the offline corpus (only https://en.wikipedia.org/wiki/... "
                            "pages returned by web_search can be crawled offline)")
        return page


class HttpCrawl:
    """Real HTTP(S) fetch with the SSRF guard, manual redirects and size/time/content-type limits.

    max_bytes: the body is read up to this many bytes and the rest is dropped; timeout: seconds for the whole
    fetch including redirects; max_redirects: hops followed, each one vetted again.
    """

    name = "http"

    def __init__(self, *, allow=(), timeout: float = 20.0, max_bytes: int = 2_000_000, max_redirects: int = 5):
        self.guard = Guard(allow)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        # trust_env=False: a proxy from the environment would connect on our behalf to addresses we never vetted.
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False,
                                         headers={"User-Agent": USER_AGENT})

    async def fetch(self, url: str) -> Page:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise ToolError(f"fetching {url} took longer than {self.timeout:g} s") from None

    async def _fetch(self, url: str) -> Page:
        current = url
        for _ in range(self.max_redirects + 1):
            target = await self.guard.vet(current)
            response = await self._get(target)
            try:
                if response.status_code in REDIRECTS and response.headers.get("location"):
                    current = urllib.parse.urljoin(current, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ToolError(f"{current} answered HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
                if content_type not in READABLE_TYPES:
                    raise ToolError(f"{current} is {content_type!r}; only HTML, PDF and plain-text pages can be read")
                body = await self._read_limited(response)
            finally:
                await response.aclose()
            title, page_text = await read_document(body, content_type, response.charset_encoding, current)
            if not page_text:
                raise ToolError(f"{current} has no readable text")
            return Page(url=current, title=title or current, text=page_text)
        raise ToolError(f"{url}: more than {self.max_redirects} redirects")

    async def _get(self, target) -> httpx.Response:
        ip = target.ip if ipaddress.ip_address(target.ip).version == 4 else f"[{target.ip}]"
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
        request = self._client.build_request(
            "GET", f"{target.scheme}://{ip}:{target.port}{target.path}", headers={"Host": host_header},
            # TLS must still verify the certificate for the name, not the address we connect to.
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {})
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise ToolError(f"could not fetch {target.url}: {type(error).__name__}") from None

    async def _read_limited(self, response: httpx.Response) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= self.max_bytes:
                break
        return b"".join(chunks)[: self.max_bytes]

    async def aclose(self) -> None:
        await self._client.aclose()


# ---------------------------------------------------------------------------------------------- summaries
def extractive_summary(page: Page, goal: str, max_chars: int = 1500) -> str:
    """The page's sentences that share most content words with the goal, in page order, up to `max_chars`.

    The page's first sentence always comes first: it says what the page is about (an encyclopedia article's
    definition of its subject), which no goal should leave out. Without a goal (or with no overlap at all) the
    rest is the page's lead too. Deterministic: ties go to the earlier sentence.
    """
    sentences, sentence_words = text_lib.sentence_words(page.text)   # remembered per page text
    goal_words = set(text_lib.content_words(goal)) or set(text_lib.content_words(page.title))
    scores = [len(goal_words & words) for words in sentence_words]
    order = sorted(range(len(sentences)), key=lambda i: (i != 0, -scores[i], i))
    chosen, used = [], 0
    for i in order:
        if chosen and used + len(sentences[i]) > max_chars:
            continue
        chosen.append(i)
        used += len(sentences[i]) + 1
    summary = " ".join(sentences[i] for i in sorted(chosen))
    return summary[:max_chars]


SUMMARY_PROMPT = (
    "You read one web page for a researcher. Summarise what the page says that is relevant to the research "
    "goal, in at most 250 words of plain prose. Keep names, numbers and dates exactly as written. Use only the "
    "page: add no outside knowledge. If the page has nothing relevant to the goal, say so in one sentence.")


async def llm_summary(llm, page: Page, goal: str, *, max_input_chars: int = 12000, max_tokens: int = 600,
                      accounting=None) -> str:
    """A goal-conditioned summary written by the LLM client (raises its LLMError after its retries)."""
    messages = [
        {"role": "system", "content": SUMMARY_PROMPT},
        {"role": "user", "content": f"Research goal: {goal or 'general overview'}\nPage title: {page.title}\n"
                                    f"URL: {page.url}\n\nPage text:\n{page.text[:max_input_chars]}"},
    ]
    result = await llm.chat(messages, temperature=0.0, max_tokens=max_tokens, accounting=accounting)
    return re.sub(r"\n{3,}", "\n\n", result.text.strip())


def page_section(page: Page, summary: str) -> str:
    """One page inside a Synthesis Report: a heading with the title and URL, so citations can be checked."""
    return f"## [{page.title}]({page.url})\nSource: {page.url}\n{summary.strip()}"


__all__ = ["BlockedURL", "HttpCrawl", "LocalCrawl", "Page", "ReaderCrawl", "ToolError", "extractive_summary",
           "html_to_text", "llm_summary", "page_section"]

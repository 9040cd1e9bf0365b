"""Page bodies to text, and the `reader` crawl backend (a Jina-reader-style HTTP service).

    title, text = await read_document(body, "text/html", "utf-8", url)

  * HTML: the main content by trafilatura (menus, cookie banners, sidebars and footers dropped), falling back to
    every visible line (crawl.html_to_text) when trafilatura finds no main content (a bare fragment, a page that
    is all table);
  * PDF: the text of every page by pypdf; the title from the document's metadata;
  * plain text and markdown: as they are.
Parsing runs in a worker thread: trafilatura and pypdf take tens of milliseconds to seconds on a large page,
and the event loop serves every other rollout meanwhile.

ReaderCrawl speaks the Jina reader's interface: GET <reader_url><page URL> with `Accept: application/json`
(and `Authorization: Bearer <key>` when a key is set) answers {"data": {"title", "url", "content"}}, or the
page as text. The reader fetches and renders the page (JavaScript-heavy pages included); the SSRF guard still
vets the page URL first, so a model cannot have the reader fetch an address it could not fetch itself.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os

import httpx
import pypdf
import trafilatura

from synth.corpus import Page
from synth.tools.search import ToolError
from synth.tools.ssrf import Guard

PDF_TYPES = ("application/pdf", "application/x-pdf")
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown")
READABLE_TYPES = HTML_TYPES + TEXT_TYPES + PDF_TYPES
# pypdf logs every malformed object of a damaged PDF at WARNING; the page text is still read.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know: UTF-8 is the web's default
        return body.decode("utf-8", errors="replace")


def _html(document: str, url: str) -> tuple[str, str]:
    from synth.tools.crawl import html_to_text

    title, everything = html_to_text(document)
    try:
        extracted = trafilatura.bare_extraction(document, url=url, with_metadata=True, include_comments=False,
                                                favor_recall=True)
    except (ValueError, TypeError):   # trafilatura rejects some malformed documents outright
        extracted = None
    text = (getattr(extracted, "text", None) or "").strip() if extracted is not None else ""
    return title or (getattr(extracted, "title", None) or ""), text or everything


def _pdf(body: bytes, url: str) -> tuple[str, str]:
    try:
        document = pypdf.PdfReader(io.BytesIO(body))
        pages = [(page.extract_text() or "").strip() for page in document.pages]
        title = str((document.metadata or {}).get("/Title") or "")
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError) as error:
        raise ToolError(f"{url}: unreadable PDF ({type(error).__name__}: {str(error)[:120]})") from None
    return title.strip(), "\n\n".join(p for p in pages if p)


async def read_document(body: bytes, content_type: str, charset: str | None, url: str) -> tuple[str, str]:
    """(title, text) of a fetched body; ToolError for a type that cannot be read."""
    if content_type in PDF_TYPES:
        return await asyncio.to_thread(_pdf, body, url)
    if content_type in HTML_TYPES:
        return await asyncio.to_thread(_html, _decode(body, charset), url)
    if content_type in TEXT_TYPES:
        return "", _decode(body, charset).strip()
    raise ToolError(f"{url} is {content_type!r}; only HTML, PDF and plain-text pages can be read")


class ReaderCrawl:
    """crawl_page through a Jina-reader-style service (module docstring).

    reader_url: the service prefix the page URL is appended to; key_env: NAME of the environment variable
    holding its key ("" or unset: no key); allow: the SSRF guard's allow-list for the page URLs.
    """

    name = "reader"

    def __init__(self, reader_url: str = "https://r.jina.ai/", *, key_env: str = "JINA_API_KEY", allow=(),
                 timeout: float = 60.0):
        if not reader_url.startswith(("http://", "https://")):
            raise ValueError(f"tools.crawl.reader_url={reader_url!r}: use an http:// or https:// URL")
        self.reader_url = reader_url if reader_url.endswith("/") else reader_url + "/"
        self.guard = Guard(allow)
        key = os.environ.get(key_env, "") if key_env else ""
        headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        # trust_env=False: the reader is reached directly, never through a proxy from the environment.
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, headers=headers)

    async def fetch(self, url: str) -> Page:
        await self.guard.vet(url)   # raises BlockedURL for an address the model may not reach
        try:
            response = await self._client.get(self.reader_url + url)
        except httpx.HTTPError as error:
            raise ToolError(f"the page reader could not fetch {url}: {type(error).__name__}") from None
        if response.status_code != 200:
            raise ToolError(f"the page reader answered HTTP {response.status_code} for {url}")
        try:
            data = response.json().get("data")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            data = None
        if isinstance(data, dict):
            title, text = str(data.get("title") or ""), str(data.get("content") or "")
        else:
            title, text = _reader_text(response.text)
        if not text.strip():
            raise ToolError(f"{url} has no readable text (page reader)")
        return Page(url=url, title=title.strip() or url, text=text.strip())

    async def aclose(self) -> None:
        await self._client.aclose()


def _reader_text(text: str) -> tuple[str, str]:
    """(title, content) of the reader's text answer: "Title: ...", "URL Source: ...", "Markdown Content:"."""
    title, marker = "", "Markdown Content:"
    for line in text.splitlines()[:5]:
        if line.startswith("Title:"):
            title = line[len("Title:"):].strip()
    return title, text.split(marker, 1)[1] if marker in text else text

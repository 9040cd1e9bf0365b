"""Sentences and content words: the shared vocabulary of every LLM-free step in the synthesizer.

Search snippets, the extractive page summary, the extractive teacher and the heuristic judge's citation check
all compare texts by the content words they share, so they all use these two functions and agree on what a
sentence and a word are.
"""
from __future__ import annotations

import functools
import re

# English function words: they carry no evidence, so overlap on them must not count as support.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just may me might more most must my myself
no nor not now of off on once only or other our ours ourselves out over own same shall she should so some such
than that the their theirs them themselves then there these they this those through to too under until up upon
us very was we were what when where which while who whom whose why will with within without would yet you your
yours yourself yourselves one two many much several however although though thus therefore via per among
""".split())

# A sentence ends at . ! ? (followed by space and a capital, digit, quote or bracket, but not a citation
# marker "[3]", which belongs to the sentence before it) or at CJK full stops.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(A-Z0-9]|\[(?!\d))|(?<=[。！？])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# content_words' fast path: every ASCII byte that is not a letter or digit -> space, other bytes kept.
_ASCII_SEPARATORS = bytes(b if b >= 128 or chr(b).isalnum() else 32 for b in range(256))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ITEM_START = re.compile(r"([-*#]|\d+[.)]\s)")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _blocks(text: str) -> list[str]:
    """Paragraphs, list items and headings, each joined into one line."""
    blocks, current = [], []
    for line in text.split("\n"):
        stripped = line.strip()
        starts_item = bool(_ITEM_START.match(stripped))
        if not stripped or starts_item:
            if current:
                blocks.append(" ".join(current))
            current = []
        if stripped:
            current.append(stripped)
        if stripped.startswith("#"):  # a heading is a block of its own
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return blocks


def sentences(text: str) -> list[str]:
    """Split prose into sentences; paragraphs, list items and headings never share a sentence."""
    out = []
    for block in _blocks(text):
        block = " ".join(block.split())
        out.extend(s.strip() for s in _SENTENCE_END.split(block) if s and s.strip())
    return out


def content_words(text: str) -> list[str]:
    """Lower-cased words minus stopwords and one-letter tokens; each CJK character counts as a word."""
    lowered = text.lower()
    if not lowered.isascii():
        others = set(_NON_ASCII.findall(lowered))
        if any(_CJK.match(ch) for ch in others):
            return _content_words_cjk(lowered)
        for ch in others:   # the few non-ASCII separators (dashes, quotes, ...) become spaces
            if not ch.isalnum():
                lowered = lowered.replace(ch, " ")
    # What is left: letters and digits (the characters of _WORD's tokens) and ASCII separators, which one
    # byte-level translate turns into spaces; splitting then yields exactly _WORD.findall(lowered), about ten
    # times faster than the regex scan.
    tokens = lowered.encode("utf-8", "surrogatepass").translate(_ASCII_SEPARATORS).decode(
        "utf-8", "surrogatepass").split()
    return [token for token in tokens if len(token) > 1 and token not in STOPWORDS]


def _content_words_cjk(lowered: str) -> list[str]:
    words = []
    for token in _WORD.findall(lowered):
        if not token.isascii() and _CJK.search(token):
            words.extend(ch for ch in token if _CJK.match(ch))
        elif len(token) > 1 and token not in STOPWORDS:
            words.append(token)
    return words


def fold(word: str) -> str:
    """A light plural fold, so "mosquitoes" ~ "mosquito" and "colonies" ~ "colony" when titles and questions are
    compared (longer words only: "gas", "bus" stay)."""
    for suffix, replacement in (("ies", "y"), ("oes", "o"), ("sses", "ss"), ("s", "")):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith(("ss", "us", "is")):
            return word[: -len(suffix)] + replacement
    return word


@functools.lru_cache(maxsize=256)
def content_word_set(text: str) -> frozenset[str]:
    """frozenset(content_words(text)), remembered for the texts seen last: the heuristic judge compares the
    same pages with the sentences of every report that cites them."""
    return frozenset(content_words(text))


@functools.lru_cache(maxsize=256)
def sentence_words(text: str) -> tuple[tuple[str, ...], tuple[frozenset[str], ...]]:
    """(sentences(text), the content word set of each), remembered for the texts seen last (pages that many
    researchers read)."""
    found = tuple(sentences(text))
    return found, tuple(frozenset(content_words(s)) for s in found)


def overlap(query_words: set[str], text: str) -> float:
    """Share of the distinct content words of `text` that are in `query_words` (0..1; 0 for an empty text)."""
    words = set(content_words(text))
    return len(words & query_words) / len(words) if words else 0.0

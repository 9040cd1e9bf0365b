"""Sentences and content words: the shared vocabulary of every LLM-free step in the synthesizer.

Search snippets, the extractive page summary, the extractive teacher and the heuristic judge's citation check
all compare texts by the content words they share, so they all use these two functions and agree on what a
sentence and a word are.
"""
from __future__ import annotations

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
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _blocks(text: str) -> list[str]:
    """Paragraphs, list items and headings, each joined into one line."""
    blocks, current = [], []
    for line in text.split("\n"):
        stripped = line.strip()
        starts_item = bool(re.match(r"([-*#]|\d+[.)]\s)", stripped))
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
    words = []
    for token in _WORD.findall(text.lower()):
        if not token.isascii() and _CJK.search(token):
            words.extend(ch for ch in token if _CJK.match(ch))
        elif len(token) > 1 and token not in STOPWORDS:
            words.append(token)
    return words


def overlap(query_words: set[str], text: str) -> float:
    """Share of the distinct content words of `text` that are in `query_words` (0..1; 0 for an empty text)."""
    words = set(content_words(text))
    return len(words & query_words) / len(words) if words else 0.0

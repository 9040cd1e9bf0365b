"""KPR/KPC and citation precision/recall with the offline lexical judge, on a hand-checked fixture."""
import asyncio

import pytest

from experiments.eval.kpr import LexicalKeyPoints, citation_scores, coverage, kpr_report, run_kpr

REPORT = """# Coral reefs

The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual reefs [1].
It was named a state icon of Queensland in 1981 by the National Trust [1].
Coral reefs are underwater ecosystems built by reef-building corals [2].
Tourists enjoy the warm water and colourful fish every summer in large numbers.

## References
[1]. https://example.org/gbr - Great Barrier Reef
[2]. https://example.org/coral - Coral reef
"""

KEY_POINTS = [
    # copied almost verbatim -> supported
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual reefs.",
    # same words, different year (2006 vs 1981) -> contradicted
    "The Queensland National Trust named it a state icon of Queensland in 2006.",
    # not in the report -> omitted
    "Reefs are formed of colonies of coral polyps held together by calcium carbonate.",
]

PAGES = {
    "https://example.org/gbr": "The Great Barrier Reef is the world's largest coral reef system, composed of over "
                               "2,900 individual reefs and 900 islands. The Queensland National Trust named it a "
                               "state icon of Queensland in 2006.",
    "https://example.org/coral": "A coral reef is an underwater ecosystem characterized by reef-building corals.",
}


class DictPages:
    async def page_text(self, url):
        return PAGES.get(url)


def test_kpr_and_kpc_on_fixture():
    out = asyncio.run(kpr_report(REPORT, KEY_POINTS, LexicalKeyPoints()))
    assert out["labels"] == ["supported", "contradicted", "omitted"]
    assert out["kpr"] == pytest.approx(1 / 3) and out["kpc"] == pytest.approx(1 / 3)


def test_empty_report_supports_nothing():
    out = asyncio.run(kpr_report("", KEY_POINTS, LexicalKeyPoints()))
    assert out["labels"] == ["omitted"] * 3 and out["kpr"] == 0.0


def test_citation_precision_and_recall_on_fixture():
    # Claims (sentences of >= 6 words): the 4 body sentences ("# Coral reefs" is a heading of 2 words).
    # Citation pairs: 3. Hand check with the lexical rules:
    #   GBR sentence -> gbr page: every content word present, figure 2900 shared      -> supported
    #   "1981" icon sentence -> gbr page: 6/7 words present, but 1981 vs {2900, 900, 2006} -> not supported
    #   coral sentence -> coral page: {coral, reefs, underwater, ecosystems, built, reef, building, corals};
    #     present: coral, underwater, reef, building, corals = 5/8 = 0.625 >= 0.6          -> supported
    # precision = 2/3; recall = 2 supported claims / 4 claims (the tourists sentence cites nothing).
    out = asyncio.run(citation_scores(REPORT, DictPages(), LexicalKeyPoints()))
    assert (out["claims"], out["pairs"], out["supported_pairs"]) == (4, 3, 2)
    assert out["citation_precision"] == pytest.approx(2 / 3)
    assert out["citation_recall"] == pytest.approx(2 / 4)


def test_coverage_counts_content_words_only():
    assert coverage("the reef and the coral", "coral reef") == 1.0
    assert coverage("coral reef", "the and") == 0.0


def test_run_kpr_requires_key_points_for_every_row():
    with pytest.raises(ValueError, match="no gold key points"):
        asyncio.run(run_kpr([{"id": "x", "article": REPORT}], {}, LexicalKeyPoints()))

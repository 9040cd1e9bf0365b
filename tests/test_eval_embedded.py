"""The embedded offline evaluation set: deterministic, built from the corpus as documented."""
import json

import pytest

from experiments.eval import make_embedded as me


def test_key_points_are_lead_plus_most_salient_in_text_order():
    text = ("Alpha is a small village in the north of the country. Its people farm wheat. "
            "It was founded in 1821 by Johann Weber and Maria Koch after the Napoleonic Wars ended. "
            "The village has a church and a school that serve the surrounding farms.")
    # "Its people farm wheat." is shorter than 40 characters; of the other two, the 1821 sentence scores
    # 2*1 (figure) + 5 capitalised words capped at 4 + content words/4 > the church sentence.
    assert me.key_points(text, 2) == [
        "Alpha is a small village in the north of the country.",
        "It was founded in 1821 by Johann Weber and Maria Koch after the Napoleonic Wars ended."]
    assert me.key_points(text, 3)[2].startswith("The village has a church")


def test_sentence_split_keeps_abbreviations_before_lower_case():
    assert me.split_sentences("It was built c. 2600 BC by workers. Then it fell.") == [
        "It was built c. 2600 BC by workers.", "Then it fell."]


def test_missing_page_is_named():
    with pytest.raises(ValueError, match="not in the corpus"):
        me.build({"Rococo": ("u", "Rococo is a style of art that emerged in France in the 1730s.")})


@pytest.fixture(scope="module")
def built():
    return me.build()


def test_build_is_deterministic_and_matches_the_committed_file(built):
    again = me.build()
    assert me.dumps(built) == me.dumps(again)
    assert me.DEFAULT_OUT.read_text(encoding="utf-8") == me.dumps(built), \
        "experiments/data/embedded_eval.jsonl is stale: run python -m experiments.eval.make_embedded"


def test_set_shape_and_key_points_come_from_the_pages(built):
    from synth import corpus

    text_of = {p.url: p.text for p in corpus.load().pages}
    assert len(built) == 30 and len({r["id"] for r in built}) == 30
    assert len({r["topic"] for r in built}) == 11
    for row in built:
        assert 2 <= len(row["pages"]) <= 4 and row["language"] == "en"
        assert row["prompt"].endswith(("?", "."))
        urls = {p["url"] for p in row["pages"]}
        assert len(row["key_points"]) >= 4
        for kp in row["key_points"]:
            assert kp["url"] in urls
            assert kp["text"] in " ".join(text_of[kp["url"]].split()), "key points are verbatim extracts"
            assert me.MIN_CHARS <= len(kp["text"]) <= me.MAX_CHARS
    rows = [json.loads(line) for line in me.DEFAULT_OUT.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"emb-{n:02d}" for n in range(1, 31)]

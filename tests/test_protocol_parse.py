"""Parsing the protocol: synthetic traces, tolerance, and the three real traces of the released 72B model."""
import json
import pathlib
import re

import pytest

from oresearcher import protocol as P

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
RELEASED = {r["id"]: r for r in map(json.loads, (FIXTURES / "released-rl-72b-traces.jsonl").open())}


def test_importing_protocol_does_not_import_jax():
    import subprocess
    import sys
    code = "import sys, oresearcher.protocol; assert 'jax' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_offsets_and_bodies():
    text = ("\n<subtask_list>\n- a\n- b\n</subtask_list>\n<subtask>a</subtask>\n<think>why</think>"
            "<web_search>query=x</web_search>\n<observation>\nhits\n</observation>\n")
    spans = P.parse(text)
    assert [s.tag for s in spans] == ["subtask_list", "subtask", "think", "web_search", "observation"]
    for s in spans:
        assert text[s.start:s.end] == f"<{s.tag}>{s.body}</{s.tag}>"
        assert text[s.body_start:s.body_end] == s.body
        assert s.closed and s.opened
    assert spans[0].body == "\n- a\n- b\n"
    assert spans[4].body == "\nhits\n"


def test_free_text_unclosed_and_unopened():
    text = "hello <think>a<plan>b</plan> tail </subtask_answer> <suggested_answer>cut"
    spans = P.parse(text)
    assert [(s.tag, s.closed, s.opened) for s in spans] == [
        (None, True, True), ("think", False, True), ("plan", True, True), ("subtask_answer", True, False),
        ("suggested_answer", False, True)]
    assert spans[0].body == "hello "
    assert spans[1].body == "a" and spans[1].end == text.index("<plan>")
    # An unopened closer takes the free text before it (leading blanks skipped) as its body.
    assert spans[3].body == "tail " and text[spans[3].start:spans[3].end] == "tail </subtask_answer>"
    assert spans[4].body == "cut" and spans[4].end == len(text)


def test_mismatched_closer_ends_open_element_unclosed():
    spans = P.parse("<think>a</plan>")
    assert [(s.tag, s.closed, s.opened, s.body) for s in spans] == [("think", False, True, "a"),
                                                                    ("plan", True, False, "")]


def test_observation_is_opaque():
    """Inside an observation only </observation> counts (the environment's text is never read as protocol)."""
    text = "<web_search>q</web_search><observation>a <think> b </think> <suggested_answer>c</observation><think>t</think>"
    spans = P.parse(text)
    assert [s.tag for s in spans] == ["web_search", "observation", "think"]
    assert spans[1].body == "a <think> b </think> <suggested_answer>c"


def test_non_canonical_tags_are_text():
    spans = P.parse("<Think>a</Think> < think>b</ think>")
    assert [s.tag for s in spans] == [None]


def test_subtask_list_is_not_subtask():
    spans = P.parse("<subtask_list>- a</subtask_list><subtask>a</subtask>")
    assert [s.tag for s in spans] == ["subtask_list", "subtask"]


def test_unclosed_observation_ends_at_the_next_observation():
    """An observation whose `</observation>` was lost does not run on to (and borrow) the next one's closer:
    the next `<observation>` ends it unclosed, so the policy's turns it swallowed never count as well formed."""
    text = ("<web_search>a</web_search>" + P.observation("one") + "<think>t</think><web_search>b</web_search>"
            + P.observation("two") + "<suggested_answer>r</suggested_answer>").replace("</observation>", "", 1)
    spans = [s for s in P.parse(text) if s.tag]
    assert [(s.tag, s.closed) for s in spans] == [("web_search", True), ("observation", False),
                                                  ("observation", True), ("suggested_answer", True)]
    assert "<think>t</think>" in spans[1].body
    assert P.format_reward(text) == 0.0


def test_observation_spans_cover_tags_and_one_trailing_newline():
    obs = P.observation("result")
    text = "<web_search>q</web_search>" + obs + "\n<think>t</think>"
    (start, end), = P.observation_spans(text)
    assert text[start:end] == obs.lstrip("\n")         # the leading newline follows the model's stop string
    assert text[end:].startswith("\n<think>")          # what the model writes next is its own
    cut = "<web_search>q</web_search>\n<observation>\npartial"
    assert P.observation_spans(cut) == [(cut.index("<observation>"), len(cut))]


@pytest.mark.parametrize("rid", [1, 21, 51])
def test_released_traces_parse_fully(rid):
    text = RELEASED[rid]["current_answer"]
    spans = P.parse(text)
    # The spans tile the text: nothing is lost except blank text between elements.
    pos = 0
    for s in spans:
        assert not text[pos:s.start].strip()
        assert s.start <= s.body_start <= s.body_end <= s.end
        pos = s.end
    assert not text[pos:].strip()
    # Every tag in the raw text is accounted for by exactly one element boundary.
    n_open = sum(1 for s in spans if s.tag and s.opened)
    n_close = sum(1 for s in spans if s.tag and s.closed)
    raw = re.findall(r"<(/?)(?:%s)>" % "|".join(P.TAGS), text)
    assert (n_open, n_close) == (raw.count(""), raw.count("/"))
    # Only web_search is used by these traces; each search is answered by an observation.
    tags = [s.tag for s in spans if s.tag]
    assert "crawl_page" not in tags
    assert tags.count("web_search") == tags.count("observation") > 0
    assert P.extract_report(text) == RELEASED[rid]["article"].strip()


def test_released_quirks_are_reported_as_such():
    spans21 = P.parse(RELEASED[21]["current_answer"])
    unopened = [s for s in spans21 if not s.opened]
    assert [s.tag for s in unopened] == ["subtask_answer"] * 3
    for s in unopened:  # the body is the model's text right after the observation
        assert not s.body.startswith("<") and len(s.body) > 100
    spans1 = P.parse(RELEASED[1]["current_answer"])
    assert [s.tag for s in spans1 if not s.opened] == ["suggested_answer"]


def test_pending_tool_call():
    head = "<subtask>a</subtask><think>t</think>"
    assert P.pending_tool_call(head + "<web_search>query=a | b&num=3</web_search>") == P.WebSearch(["a", "b"], 3)
    assert P.pending_tool_call(head + "<crawl_page>https://a.org</crawl_page>\n") == P.CrawlPage(["https://a.org"])
    assert P.pending_tool_call(head) is None
    assert P.pending_tool_call(head + "<suggested_answer>r</suggested_answer>") is None
    orphan = P.pending_tool_call(head + "query=a</web_search>")
    assert isinstance(orphan, P.ToolCallError) and "without <web_search>" in orphan.reason
    # A call whose text is an earlier, already answered call is not pending.
    done = head + "<web_search>query=a</web_search>" + P.observation("x")
    assert P.pending_tool_call(done) is None


def test_pending_tool_call_on_released_trace():
    text = RELEASED[51]["current_answer"]
    cut = text.index("</web_search>") + len("</web_search>")
    call = P.pending_tool_call(text[:cut])
    body = text[text.index("<web_search>") + len("<web_search>"):text.index("</web_search>")]
    assert isinstance(call, P.WebSearch) and call.num == 10
    assert call.queries == [q.strip() for q in body.split("&num=")[0].removeprefix("query=").split("|")]

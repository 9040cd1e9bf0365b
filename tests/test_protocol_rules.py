"""Tool-call parsing, observation rendering, reports, validation (hard rules), R_format and R_tool."""
import json
import pathlib

import pytest

from oresearcher import protocol as P

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
RELEASED = {r["id"]: r for r in map(json.loads, (FIXTURES / "released-rl-72b-traces.jsonl").open())}


# ------------------------------------------------------------------------------------------------ tool calls
@pytest.mark.parametrize("body,want", [
    ("query=a | b | c&num=5", P.WebSearch(["a", "b", "c"], 5)),
    ("query=a", P.WebSearch(["a"], 10)),
    ("  query = a|b  ", P.WebSearch(["a", "b"], 10)),
    ("query=a&num=50", P.WebSearch(["a"], 20)),                     # capped
    ("query=AT&T revenue 2024&num=3", P.WebSearch(["AT&T revenue 2024"], 3)),
    ("a | b", P.WebSearch(["a", "b"], 10)),                          # query= omitted
    ("query=日本 高齢者 | e-Stat&NUM = 7", P.WebSearch(["日本 高齢者", "e-Stat"], 7)),
])
def test_web_search_calls(body, want):
    assert P.parse_tool_call("web_search", body) == want


@pytest.mark.parametrize("body,want", [
    ("url=https://a.org/x | https://b.org/y", P.CrawlPage(["https://a.org/x", "https://b.org/y"])),
    # The first URL is kept with `url=` (the official parser's bug drops it) and without it (older models).
    ("url=https://a.org", P.CrawlPage(["https://a.org"])),
    ("https://a.org | https://b.org", P.CrawlPage(["https://a.org", "https://b.org"])),
    ("url=https://a.org/?q=1&r=2", P.CrawlPage(["https://a.org/?q=1&r=2"])),
    ("url=a.org/page | https://b.org&goal=find the GDP", P.CrawlPage(["https://a.org/page", "https://b.org"],
                                                                    "find the GDP")),
])
def test_crawl_page_calls(body, want):
    assert P.parse_tool_call("crawl_page", body) == want


@pytest.mark.parametrize("tag,body,reason", [
    ("web_search", "", "no query"),
    ("web_search", "query= | ", "no query"),
    ("web_search", "query=a&num=ten", "not a positive integer"),
    ("web_search", "query=a&num=0", "at least 1"),
    ("crawl_page", "url=", "no URL"),
    ("crawl_page", "url=not a url", "not a URL"),
    ("python", "print(1)", "unknown tool"),
])
def test_malformed_calls_are_errors(tag, body, reason):
    call = P.parse_tool_call(tag, body)
    assert isinstance(call, P.ToolCallError) and reason in call.reason and call.body == body


def test_parse_tool_call_never_raises():
    for body in ["\x00", "&num=", "|||", "url=|", "&goal=", "query=&num=99999999999999999999", "<>" * 100]:
        for tag in ("web_search", "crawl_page"):
            P.parse_tool_call(tag, body)


# ------------------------------------------------------------------------------------------------ rendering
def test_render_search_layout():
    hits = [P.SearchHit("Tokyo", "https://en.wikipedia.org/wiki/Tokyo", "Capital of\nJapan.", "Jun 14, 2025", "wiki"),
            P.SearchHit("Osaka", "https://en.wikipedia.org/wiki/Osaka")]
    text = P.render_search({"japan cities": hits, "atlantis": []})
    assert text.startswith("# Search Summary\nTotal results: 2\n\n## Query: 'japan cities'\nFound 2 results:\n\n"
                           "1. [Tokyo](https://en.wikipedia.org/wiki/Tokyo)\nDate published: Jun 14, 2025\n")
    assert "2. [Osaka](https://en.wikipedia.org/wiki/Osaka)" in text
    assert "## Query: 'atlantis'\nNo results found for 'atlantis'" in text


def test_render_search_matches_released_layout():
    """The released observations start the same way ours do."""
    obs = [s.body for s in P.parse(RELEASED[21]["current_answer"]) if s.tag == "observation"][0]
    ours = P.render_search({"q": [P.SearchHit("t", "https://x")]})
    assert obs.strip().splitlines()[:2] == ["# Search Summary", "Total results: 10"]
    assert ours.splitlines()[0] == "# Search Summary" and ours.splitlines()[1].startswith("Total results: ")
    assert "## Query: '" in obs and "Found 2 results:" in obs


def test_render_synthesis_and_error():
    assert P.render_synthesis("  summary\n").startswith("# Synthesis Report\n\nsummary")
    err = P.render_error("crawl_page", "timeout\nafter 30 s")
    assert "Error" in err and "crawl_page" in err and "timeout after 30 s" in err


# ------------------------------------------------------------------------------------------------ reports
def test_references_and_citations():
    report = ("Intro [1]. More [2, 3] and [4-5], a link [6](https://x) and 【7】.\n\nReferences\n"
              "[1]. https://a.org - A\n[2] https://b.org/p?q=1 - B title - part\n[3]. https://c.org\n")
    assert P.parse_references(report) == [(1, "https://a.org", "A"), (2, "https://b.org/p?q=1", "B title - part"),
                                          (3, "https://c.org", "")]
    assert P.cited_numbers(report) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("text,lang", [
    ("The population of Japan is declining quickly.", "en"),
    ("日本的老年人口将持续增长，消费潜力巨大。", "zh"),
    ("日本の高齢者人口は増え続けています。", "ja"),
    ("한국의 고령 인구는 빠르게 증가하고 있다.", "ko"),
    ("Население Японии сокращается.", "ru"),
    ("", ""),
])
def test_detect_language(text, lang):
    assert P.detect_language(text) == lang


def test_detect_language_of_released_reports():
    for rid, record in RELEASED.items():
        assert P.detect_language(record["article"]) == "zh", rid
    assert [P.detect_language(RELEASED[i]["prompt"]) for i in (1, 21, 51)] == ["zh", "zh", "en"]


# ------------------------------------------------------------------------------------------------ validation
def good_trace(subtasks=2, searches=3, crawls=1):
    out = ["<subtask_list>\n" + "\n".join(f"- q{i}" for i in range(subtasks)) + "\n</subtask_list>\n"]
    for i in range(subtasks):
        out.append(f"<subtask>q{i}</subtask>\n<think>a</think>\n<plan>b</plan>\n")
        for k in range(searches):   # distinct calls: R_tool counts a repeated call once
            out.append(f"<think>c</think>\n<web_search>query=x{i}.{k} | y&num=5</web_search>" + P.observation("hits"))
        for k in range(crawls):
            out.append(f"<crawl_page>url=https://a.org/{i}/{k}</crawl_page>" + P.observation("# Synthesis Report\n..."))
        out.append("<subtask_answer>answer [1]</subtask_answer>\n")
    out.append("<suggested_answer>The report [1].\n\nReferences\n[1]. https://a.org - A</suggested_answer>")
    return "".join(out)


def test_good_trace_is_valid():
    text = good_trace()
    assert P.validate(text, "What is x?") == []
    assert P.count_tool_calls(text) == {"web_search": 6, "crawl_page": 2}
    assert P.format_reward(text) == 1.0


def _names(reasons):
    return sorted({r.split(":")[0] for r in reasons})


@pytest.mark.parametrize("edit,name", [
    (lambda t: t.replace("</think>", "", 1), "unclosed_tag"),
    (lambda t: t.replace("<plan>", "", 1), "unopened_tag"),
    (lambda t: t.replace("<subtask>q1</subtask>", "stray words <subtask>q1</subtask>"), "stray_text"),
    (lambda t: t[t.index("<subtask>"):], "order"),                                    # no subtask list
    (lambda t: t.replace("<think>a</think>\n<plan>", "<plan>", 1).replace(
        "<think>c</think>\n<web_search>", "<web_search>", 2), "order"),               # plan before think
    (lambda t: t.replace("<subtask_answer>answer [1]</subtask_answer>\n", "", 1), "order"),
    (lambda t: t.replace("<crawl_page>url=https://a.org/0/0</crawl_page>", "", 1), "order"),  # orphan observation
    (lambda t: t + "\n<think>after</think>", "order"),                                # report not last
    (lambda t: t.replace("query=x0.0 | y&num=5", "query=&num=5", 1), "malformed_tool_call"),
])
def test_each_rule_is_named(edit, name):
    reasons = P.validate(edit(good_trace()), min_reasoning_steps=1, min_tool_calls=1)
    assert name in _names(reasons), reasons


def test_thresholds():
    text = good_trace(subtasks=1, searches=1, crawls=0)    # 3 reasoning steps, 1 tool call
    reasons = P.validate(text, min_reasoning_steps=10, min_tool_calls=5, max_tokens=10)
    assert "too_few_reasoning_steps: 3 < 10" in reasons
    assert "too_few_tool_calls: 1 < 5" in reasons
    assert any(r.startswith("too_long:") for r in reasons)
    assert P.validate(text, min_reasoning_steps=3, min_tool_calls=1, max_tokens=10_000) == []
    assert P.validate(text, min_reasoning_steps=3, min_tool_calls=1, max_tokens=100,
                      count_tokens=lambda s: 101) == ["too_long: 101 tokens > 100"]


def test_language_mismatch():
    text = good_trace().replace("The report [1].", "这是报告的正文，引用了来源 [1]。")
    assert _names(P.validate(text, "这是什么？")) == []
    assert "language_mismatch: question is en, report is zh" in P.validate(text, "What is it?")


def test_released_traces_validate():
    reasons = {rid: P.validate(r["current_answer"], r["prompt"]) for rid, r in RELEASED.items()}
    assert "language_mismatch: question is en, report is zh" in reasons[51]
    assert not any(r.startswith("language_mismatch") for r in reasons[1] + reasons[21])
    for rid in RELEASED:  # the missing openers after observations are named, with their positions
        assert "unopened_tag" in _names(reasons[rid])
    assert "too_few_tool_calls: 1 < 5" in reasons[1]
    assert not any(r.startswith("too_long") for rs in reasons.values() for r in rs)


# ------------------------------------------------------------------------------------------------ rewards
def test_format_reward_cases():
    text = good_trace()
    assert P.format_reward(text) == 1.0
    assert P.format_reward(text.replace("</think>", "", 1)) == 0.0                 # unclosed
    assert P.format_reward(text.replace("<plan>", "", 1)) == 0.0                   # closer without opener
    no_report = text[:text.index("<suggested_answer>")]
    assert P.format_reward(no_report) == 0.0                                       # no <suggested_answer>
    assert P.format_reward(text[:-len("</suggested_answer>")]) == 0.0              # report cut off
    assert P.format_reward("<suggested_answer>only</suggested_answer>") == 1.0
    for record in RELEASED.values():                                              # missing openers
        assert P.format_reward(record["current_answer"]) == 0.0


@pytest.mark.parametrize("searches,crawls,want", [
    (5, 0, 0.0),             # N = min = 0 < 2
    (1, 9, 0.0),             # N = 1 < 2
    (2, 2, 0.0),             # N = low -> 0
    (3, 5, 1 / 6),
    (5, 5, 0.5),
    (8, 8, 1.0),             # N = high -> 1
    (9, 12, -1.0),           # N > high -> penalty
])
def test_tool_reward_branches(searches, crawls, want):
    text = good_trace(subtasks=1, searches=searches, crawls=crawls)
    assert P.tool_reward(text) == pytest.approx(want)


def test_tool_reward_configurable():
    text = good_trace(subtasks=1, searches=4, crawls=4)
    assert P.tool_reward(text, low=0, high=4) == 1.0
    assert P.tool_reward(text, low=0, high=3, over_penalty=-0.5) == -0.5
    assert P.tool_reward(text, low=4, high=4) == 1.0
    cut = text + "<crawl_page>url=https://b.org"                      # an unclosed call does not count
    assert P.tool_reward(cut, low=0, high=5) == pytest.approx(4 / 5)


def test_system_prompt_names_the_protocol():
    prompt = P.system_prompt()
    for tag in P.TAGS:
        assert f"<{tag}>" in prompt
    assert "query=" in prompt and "url=" in prompt and "[n]. URL - Title" in prompt

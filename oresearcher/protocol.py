"""The trajectory protocol (PAPER §4): the one home of its tags, tool calls, observations, rules and rewards.

A trajectory is one assistant text written in a flat sequence of tagged elements:

    <subtask_list>- q1\n- q2</subtask_list>
    <subtask>q1</subtask> <think>…</think> <plan>…</plan>
    <web_search>query=a | b&num=10</web_search> <observation>…environment text…</observation>
    <crawl_page>url=https://x | https://y</crawl_page> <observation>…</observation>
    <subtask_answer>…</subtask_answer>  <subtask>q2</subtask> …
    <suggested_answer>final report … References: [n]. URL - Title</suggested_answer>

Elements do not nest. The released 72B model speaks this protocol with quirks that `parse` tolerates: an
opening tag missing after an observation (the closer then ends the free text before it), unclosed elements,
free text between elements. `<observation>` is opaque: only `</observation>` ends it, and `sanitize` makes sure
untrusted tool text can never contain a protocol tag, so the environment can not open or close elements.

Standard library only: the synthesizer (no JAX) imports this module.
"""
from __future__ import annotations

import math
import re
import threading
import unicodedata
from dataclasses import dataclass

TAGS = ("subtask_list", "subtask", "think", "plan", "web_search", "crawl_page", "observation",
        "subtask_answer", "suggested_answer")
TOOL_TAGS = ("web_search", "crawl_page")
STOP_STRINGS = ("</web_search>", "</crawl_page>", "</suggested_answer>")
DEFAULT_NUM = 10   # web_search results per query when `&num=` is absent
MAX_NUM = 20       # cap on `&num=`
# The tool-call band of R_tool (PAPER §6), N = min(#web_search, #crawl_page) distinct calls: N < TOOL_LOW pays 0,
# N > TOOL_HIGH pays TOOL_OVER_PENALTY. The one home of the band: the reward (oresearcher/rl/rewards.py) and the
# synthesizer's funnel and teachers (configs/synth.py workflow.tool_low/tool_high) default to these.
TOOL_LOW = 2
TOOL_HIGH = 8
TOOL_OVER_PENALTY = -1.0

# Canonical tags only (lowercase, no spaces): what the model writes and what the parser acts on. Longer names
# first so `subtask_list` is not read as `subtask`.
_TAG = re.compile(r"<(/?)(%s)>" % "|".join(sorted(TAGS, key=len, reverse=True)))


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Span:
    """One element of a trajectory, or free text between elements (tag None).

    start/end: character offsets of the whole element incl. its tags; body_start/body_end: of its body.
    closed: the element has its closing tag. opened: it has its opening tag (False for a closer whose opener
    is missing, a quirk of the released model after observations; its body is then the text before it).
    """
    tag: str | None
    body: str
    start: int
    end: int
    body_start: int
    body_end: int
    closed: bool
    opened: bool = True


def _span(tag: str | None, body: str, start: int, end: int, body_start: int, body_end: int, closed: bool,
          opened: bool = True) -> Span:
    """Span(...) without the frozen dataclass's object.__setattr__ per field: parse makes thousands."""
    span = object.__new__(Span)
    span.__dict__.update(tag=tag, body=body, start=start, end=end, body_start=body_start, body_end=body_end,
                         closed=closed, opened=opened)
    return span


# The funnel, the judge, the record's meta and the rewards all parse the same finished trajectory: the spans of
# the last few long texts are kept (Span is frozen; every caller gets its own list), so each is parsed once.
_PARSED: dict[str, tuple[Span, ...]] = {}
_PARSED_LOCK = threading.Lock()
_PARSED_MIN_CHARS = 2048   # shorter texts (single teacher steps) parse in microseconds and rarely repeat
_PARSED_ENTRIES = 64


def parse(text: str) -> list[Span]:
    """Elements and non-blank free text of `text`, in order. Never raises.

    An opener while another element is open ends that element unclosed; a closer that does not match the open
    element (or with none open) turns the free text since the previous element into that element, unopened.
    Inside an open observation only `</observation>` and `<observation>` count, so observation text is never read
    as protocol; a second `<observation>` ends the first unclosed (the environment sanitises every observation
    body, so only a trace whose `</observation>` was lost has one, and the policy's turns it swallowed must not
    pass as a well-formed observation).
    """
    if len(text) < _PARSED_MIN_CHARS:
        return _parse(text)
    spans = _PARSED.get(text)
    if spans is None:
        spans = tuple(_parse(text))
        with _PARSED_LOCK:
            if len(_PARSED) >= _PARSED_ENTRIES:
                del _PARSED[next(iter(_PARSED))]   # the oldest entry (dicts keep insertion order)
            _PARSED[text] = spans
    return list(spans)


def _parse(text: str) -> list[Span]:
    spans: list[Span] = []
    cursor = 0                                  # end of the last emitted span
    open_tag, open_start, body_start = None, 0, 0

    def free(upto: int) -> None:
        if text[cursor:upto].strip():
            spans.append(_span(None, text[cursor:upto], cursor, upto, cursor, upto, closed=True))

    for m in _TAG.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag == "observation" and tag != "observation":
            continue
        if not closing:
            if open_tag is not None:
                spans.append(_span(open_tag, text[body_start:m.start()], open_start, m.start(), body_start,
                                  m.start(), closed=False))
            else:
                free(m.start())
            open_tag, open_start, body_start = tag, m.start(), m.end()
            cursor = m.start()
            continue
        if open_tag == tag:
            spans.append(_span(tag, text[body_start:m.start()], open_start, m.end(), body_start, m.start(),
                              closed=True))
        else:
            if open_tag is not None:
                spans.append(_span(open_tag, text[body_start:m.start()], open_start, m.start(), body_start,
                                  m.start(), closed=False))
                cursor = m.start()
            start = cursor + (len(text[cursor:m.start()]) - len(text[cursor:m.start()].lstrip()))
            spans.append(_span(tag, text[start:m.start()], start, m.end(), start, m.start(), closed=True,
                              opened=False))
        open_tag, cursor = None, m.end()
    if open_tag is not None:
        spans.append(_span(open_tag, text[body_start:], open_start, len(text), body_start, len(text), closed=False))
    else:
        free(len(text))
    return spans


def observation_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges [start, end) written by the environment: every observation element with both tags
    (the model stops at `</web_search>`, so `<observation>` is the environment's too) and the one newline after
    it that `observation` writes. The newline `observation` writes before the element counts as the model's:
    BPE merges it with the `>` that closes the tool call (e.g. `>\n`), and that token must be trained. The loss
    masks of SFT and RL exclude exactly these ranges from the assistant text."""
    ranges = []
    for s in parse(text):
        if s.tag == "observation":
            end = s.end + (1 if s.closed and text.startswith("\n", s.end) else 0)
            ranges.append((s.start, end))
    return ranges


# ------------------------------------------------------------------------------------------------ tool calls
@dataclass(frozen=True)
class WebSearch:
    queries: list[str]
    num: int = DEFAULT_NUM


@dataclass(frozen=True)
class CrawlPage:
    urls: list[str]
    goal: str = ""


@dataclass(frozen=True)
class ToolCallError:
    """A malformed call: the rollout answers it with `render_error` instead of raising."""
    tag: str
    body: str
    reason: str


_NUM = re.compile(r"&\s*num\s*=\s*([^&|]*?)\s*$", re.IGNORECASE)
_GOAL = re.compile(r"&\s*goal\s*=(.*)$", re.IGNORECASE | re.DOTALL)
_HOST = re.compile(r"^[\w.-]+\.[a-z]{2,}(?::\d+)?(?:[/?#]\S*)?$", re.IGNORECASE)
_KEY = {key: re.compile(r"\s*%s\s*=\s*" % key, re.IGNORECASE) for key in ("query", "url")}
_DIGITS = re.compile(r"\d+")
_HTTP_URL = re.compile(r"https?://\S+$", re.IGNORECASE)


def _strip_key(body: str, key: str) -> str:
    m = _KEY[key].match(body)
    return body[m.end():] if m else body


def parse_tool_call(tag: str, body: str) -> WebSearch | CrawlPage | ToolCallError:
    """`web_search`: `query=q1 | q2&num=N` (`query=` optional; N default 10, capped at 20).
    `crawl_page`: `url=u1 | u2` or the older `u1 | u2` (never drops the first URL), optional `&goal=...`;
    a URL without scheme that looks like a host gets `https://`. Anything else is a ToolCallError."""
    try:
        text = body.strip()
        if tag == "web_search":
            num = DEFAULT_NUM
            m = _NUM.search(text)
            if m:
                text = text[:m.start()]
                if not _DIGITS.fullmatch(m.group(1)):
                    return ToolCallError(tag, body, f"num={m.group(1)!r} is not a positive integer")
                num = int(m.group(1))
                if num < 1:
                    return ToolCallError(tag, body, "num must be at least 1")
            queries = [q.strip() for q in _strip_key(text, "query").split("|") if q.strip()]
            if not queries:
                return ToolCallError(tag, body, "no query: write query=q1 | q2&num=10")
            return WebSearch(queries=queries, num=min(num, MAX_NUM))
        if tag == "crawl_page":
            goal = ""
            m = _GOAL.search(text)
            if m:
                text, goal = text[:m.start()], m.group(1).strip()
            urls, bad = [], []
            for part in _strip_key(text, "url").split("|"):
                url = part.strip()
                if not url:
                    continue
                if _HTTP_URL.match(url):
                    urls.append(url)
                elif _HOST.match(url):
                    urls.append("https://" + url)
                else:
                    bad.append(url)
            if bad:
                return ToolCallError(tag, body, f"not a URL: {bad[0][:200]!r}")
            if not urls:
                return ToolCallError(tag, body, "no URL: write url=https://a | https://b")
            return CrawlPage(urls=urls, goal=goal)
        return ToolCallError(tag, body, f"unknown tool <{tag}>; the tools are {', '.join(TOOL_TAGS)}")
    except Exception as e:  # a malformed call must never end a rollout
        return ToolCallError(tag, body, f"unparseable call ({type(e).__name__})")


def pending_tool_call(text: str) -> WebSearch | CrawlPage | ToolCallError | None:
    """The tool call `text` ends with (a generation stopped at `</web_search>` or `</crawl_page>`), else None."""
    tail = text.rstrip()
    for tag in TOOL_TAGS:
        if tail.endswith(f"</{tag}>"):
            spans = parse(tail)
            last = spans[-1] if spans else None
            if last is None or last.tag != tag or not last.opened:
                return ToolCallError(tag, "", f"</{tag}> without <{tag}>")
            return parse_tool_call(tag, last.body)
    return None


# ------------------------------------------------------------------------------------------------ observations
@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str
    snippet: str = ""
    date: str = ""
    source: str = ""


def render_search(results: dict[str, list[SearchHit]]) -> str:
    """The search observation body in the released layout (one section per query, in the dict's order)."""
    total = sum(len(hits) for hits in results.values())
    lines = ["# Search Summary", f"Total results: {total}"]
    for query, hits in results.items():
        lines += ["", f"## Query: '{query}'"]
        if not hits:
            lines.append(f"No results found for '{query}'. Try a shorter or different query.")
            continue
        lines.append(f"Found {len(hits)} results:")
        for i, hit in enumerate(hits, 1):
            lines += ["", f"{i}. [{_one_line(hit.title) or hit.url}]({hit.url})"]
            if hit.date:
                lines.append(f"Date published: {_one_line(hit.date)}")
            if hit.source:
                lines.append(f"Source: {_one_line(hit.source)}")
            if hit.snippet:
                lines += ["", hit.snippet.strip()]
    return "\n".join(lines).rstrip() + "\n"


def _one_line(s: str) -> str:
    return " ".join(s.split())


def render_synthesis(report: str) -> str:
    """The crawl observation body: a goal-conditioned summary of the crawled pages."""
    return "# Synthesis Report\n\n" + report.strip() + "\n"


def render_error(tool: str, message: str) -> str:
    """An observation body that says plainly that the call failed (so the model can retry or move on)."""
    return (f"# Tool Error\nError: the {tool} call failed: {_one_line(message)}\n"
            "No results were returned for this call.\n")


# Anything a reader could take for a protocol tag: any case, spaces inside the brackets, attributes;
# chat-template control tokens (<|im_end|>, <|eot_id|>, <｜end▁of▁sentence｜>, </s>) too, so tool text cannot
# end a turn.
_TAG_LIKE = re.compile(r"<\s*(/?)\s*(%s)\b[^<>]*>" % "|".join(sorted(TAGS, key=len, reverse=True)), re.IGNORECASE)
_CONTROL = re.compile(r"<\s*[|｜]([^<>|｜]{0,64})[|｜]\s*>|<\s*(/?)\s*s\s*>", re.IGNORECASE)


def sanitize(text: str) -> str:
    """Untrusted tool text with every tag-like `<tag>`/`</tag>` (any case or spacing) rewritten as `[tag]`/
    `[/tag]`: the words stay readable, the brackets can no longer open or close an element."""
    if "<" not in text:   # both patterns start with "<": nothing to rewrite (the common case, checked in C)
        return text
    while True:
        out = _TAG_LIKE.sub(lambda m: f"[{m.group(1)}{m.group(2).lower()}]", text)
        out = _CONTROL.sub(lambda m: f"[|{m.group(1)}|]" if m.group(1) is not None else f"[{m.group(2)}s]", out)
        if out == text:
            return out
        text = out


def observation(body: str) -> str:
    """The environment's observation element for `body` (sanitised), with the whitespace the environment
    writes around it: the model's text resumes right after the trailing newline."""
    return "\n<observation>\n" + sanitize(body).strip("\n") + "\n</observation>\n"


# ------------------------------------------------------------------------------------------------ reports
_REFERENCE = re.compile(r"^\s*\[(\d+)\]\.?\s*<?(https?://[^\s>]+)>?\s*(?:[-–—:]\s*(.*?))?\s*$", re.MULTILINE)
_CITATION = re.compile(r"\[(\d+(?:\s*[,，、\-–]\s*\d+)*)\](?!\()")
_CITATION_COMMA = re.compile(r"\s*[,，、]\s*")
_CITATION_DASH = re.compile(r"\s*[\-–]\s*")


def extract_report(text: str) -> str | None:
    """The body of the last `<suggested_answer>` element (stripped), None when there is none."""
    return _extract_report(parse(text))


def _extract_report(spans: list[Span]) -> str | None:
    bodies = [s.body for s in spans if s.tag == "suggested_answer"]
    return bodies[-1].strip() if bodies else None


def parse_references(report: str) -> list[tuple[int, str, str]]:
    """Reference entries `[n]. URL - Title` (dot and title optional) as (n, url, title), in order."""
    return [(int(m.group(1)), m.group(2), (m.group(3) or "").strip()) for m in _REFERENCE.finditer(report)]


def cited_numbers(report: str) -> list[int]:
    """Inline citations `[n]`, `[n, m]`, `[n-m]` in reading order (reference entries and `[n](link)` skipped)."""
    body = _REFERENCE.sub("", report)
    return [n for m in _CITATION.finditer(body) for n in _citation_numbers(m.group(1))]


def citation_spans(text: str) -> list[tuple[int, int, list[int]]]:
    """Inline citations of `text` (one line of a report, say) as (start, end, numbers): the character range
    of each bracket `[n]`, `[n, m]`, `[n-m]` and the numbers it cites. Reference entries are not skipped: pass
    text without them (a line that `parse_references` reads as an entry is one)."""
    return [(m.start(), m.end(), _citation_numbers(m.group(1))) for m in _CITATION.finditer(text)]


def _citation_numbers(inside: str) -> list[int]:
    """`1, 3-5` -> [1, 3, 4, 5] (a range wider than 50 or reversed keeps its first number only)."""
    out: list[int] = []
    for part in _CITATION_COMMA.split(inside):
        lo, _, hi = _CITATION_DASH.sub("-", part).partition("-")
        if hi and 0 <= int(hi) - int(lo) <= 50:
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(lo))
    return out


# ------------------------------------------------------------------------------------------------ language
_ANY_URL = re.compile(r"https?://\S+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")


def _script_counts(text: str) -> dict[str, int]:
    counts = dict.fromkeys(("han", "kana", "hangul", "latin", "cyrillic", "arabic"), 0)
    text = _ANY_URL.sub(" ", text)
    if text.isascii():   # the common case, counted in C: every ASCII letter is Latin
        counts["latin"] = len(_ASCII_LETTER.findall(text))
        return counts
    for ch in text:
        o = ord(ch)
        if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            counts["han"] += 1
        elif 0x3040 <= o <= 0x30FF:
            counts["kana"] += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
            counts["hangul"] += 1
        elif ch.isalpha():
            name = unicodedata.name(ch, "")
            for script in ("LATIN", "CYRILLIC", "ARABIC"):
                if name.startswith(script):
                    counts[script.lower()] += 1
    return counts


def detect_language(text: str) -> str:
    """The language of `text` by script: "zh", "ja", "ko", "ru", "ar" or "en" (any Latin script); "" if none.

    One CJK character carries about as much as one word, a Latin word about five letters: the scores are
    weighted that way so a Chinese report citing English titles stays "zh". URLs are ignored."""
    c = _script_counts(text)
    scores = {"cjk": c["han"] + c["kana"] + c["hangul"], "latin": c["latin"] / 5,
              "cyrillic": c["cyrillic"] / 5, "arabic": c["arabic"] / 5}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        return ""
    if best == "cjk":
        if c["hangul"] > c["han"] + c["kana"]:
            return "ko"
        return "ja" if c["kana"] > 0.2 * (c["han"] + c["kana"]) else "zh"
    return {"latin": "en", "cyrillic": "ru", "arabic": "ar"}[best]


# ------------------------------------------------------------------------------------------------ rules
def count_tool_calls(text: str) -> dict[str, int]:
    """Closed tool-call elements per tool (a call cut off by the token budget does not count)."""
    return _count_tool_calls(parse(text))


def _count_tool_calls(spans: list[Span]) -> dict[str, int]:
    counts = dict.fromkeys(TOOL_TAGS, 0)
    for s in spans:
        if s.tag in counts and s.closed and s.opened:
            counts[s.tag] += 1
    return counts


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate: ~4 ASCII characters per token, one token per other character."""
    ascii_chars = len(text.encode("ascii", "ignore"))   # the characters below 128, counted in C
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def validate(text: str, question: str | None = None, *, min_reasoning_steps: int = 10, min_tool_calls: int = 5,
             max_tokens: int = 65536, count_tokens=None) -> list[str]:
    """The hard rules of the quality funnel (PAPER §3–4). Returns reasons "name: detail" ([] when valid):

    unclosed_tag, unopened_tag, stray_text: every element opened and closed, no text outside elements;
    order: starts with <subtask_list>, a <subtask> right after it, <think> before any <plan> or tool call in a
    subtask, each subtask ends with <subtask_answer>, every observation right after a tool call and every tool
    call answered by one, the run ends with <suggested_answer>;
    malformed_tool_call; too_few_reasoning_steps (a step is one <think> or <plan> element);
    too_few_tool_calls (web_search + crawl_page); too_long (`count_tokens(text)`, else `estimate_tokens`);
    language_mismatch (report language vs question language, when the question is given).
    """
    reasons: list[str] = []
    spans = parse(text)
    elements = [s for s in spans if s.tag is not None]
    if not elements:
        return ["empty: no protocol elements"]
    for s in spans:
        if s.tag is None:
            reasons.append(f"stray_text: free text at char {s.start}: {s.body.strip()[:60]!r}")
        elif not s.closed:
            reasons.append(f"unclosed_tag: <{s.tag}> at char {s.start}")
        elif not s.opened:
            reasons.append(f"unopened_tag: </{s.tag}> at char {s.body_end} has no <{s.tag}>")

    tags = [s.tag for s in elements]
    if tags[0] != "subtask_list":
        reasons.append(f"order: starts with <{tags[0]}>, not <subtask_list>")
    elif len(tags) < 2 or tags[1] != "subtask":
        reasons.append("order: <subtask_list> is not followed by <subtask>")
    in_subtask, thought, answered = False, False, True
    for i, s in enumerate(elements):
        where = f"at char {s.start}"
        if s.tag == "subtask":
            if in_subtask and not answered:
                reasons.append(f"order: subtask before char {s.start} ends without <subtask_answer>")
            in_subtask, thought, answered = True, False, False
        elif s.tag == "think":
            thought = True
        elif s.tag in ("plan",) + TOOL_TAGS:
            if in_subtask and not thought:
                reasons.append(f"order: <{s.tag}> {where} before any <think> in its subtask")
        elif s.tag == "subtask_answer":
            if not in_subtask:
                reasons.append(f"order: <subtask_answer> {where} outside a subtask")
            answered = True
        elif s.tag == "suggested_answer" and i != len(elements) - 1:
            reasons.append(f"order: <suggested_answer> {where} is not the last element")
        if s.tag == "observation" and (i == 0 or elements[i - 1].tag not in TOOL_TAGS):
            reasons.append(f"order: <observation> {where} does not follow a tool call")
        if s.tag in TOOL_TAGS:
            if i + 1 >= len(elements) or elements[i + 1].tag != "observation":
                reasons.append(f"order: <{s.tag}> {where} is not followed by an observation")
            call = parse_tool_call(s.tag, s.body)
            if isinstance(call, ToolCallError):
                reasons.append(f"malformed_tool_call: <{s.tag}> {where}: {call.reason}")
    if in_subtask and not answered:
        reasons.append("order: the last subtask ends without <subtask_answer>")
    if tags[-1] != "suggested_answer":
        reasons.append(f"order: ends with <{tags[-1]}>, not <suggested_answer>")

    steps = sum(1 for s in elements if s.tag in ("think", "plan"))
    if steps < min_reasoning_steps:
        reasons.append(f"too_few_reasoning_steps: {steps} < {min_reasoning_steps}")
    calls = sum(_count_tool_calls(spans).values())
    if calls < min_tool_calls:
        reasons.append(f"too_few_tool_calls: {calls} < {min_tool_calls}")
    n_tokens = count_tokens(text) if count_tokens is not None else estimate_tokens(text)
    if n_tokens > max_tokens:
        reasons.append(f"too_long: {n_tokens} tokens > {max_tokens}")
    report = _extract_report(spans)
    if question is not None and report:
        want, got = detect_language(question), detect_language(report)
        if want and got and want != got:
            reasons.append(f"language_mismatch: question is {want}, report is {got}")
    return reasons


# ------------------------------------------------------------------------------------------------ rewards
def format_reward(text: str) -> float:
    """R_format: 1.0 when every element is opened and closed (tags symmetric) and a <suggested_answer> exists."""
    spans = [s for s in parse(text) if s.tag is not None]
    symmetric = all(s.closed and s.opened for s in spans)
    return 1.0 if symmetric and any(s.tag == "suggested_answer" for s in spans) else 0.0


def _call_key(span: Span) -> tuple:
    """What a tool call asks for, so a repeat is recognised however it is spaced or ordered: the set of
    (lower-cased, space-collapsed) queries of a search, the set of URLs of a crawl (its goal aside)."""
    call = parse_tool_call(span.tag, span.body)
    if isinstance(call, WebSearch):
        return span.tag, frozenset(" ".join(q.lower().split()) for q in call.queries)
    if isinstance(call, CrawlPage):
        return span.tag, frozenset(call.urls)
    return span.tag, " ".join(span.body.split())


def tool_n(text: str) -> int:
    """N of R_tool: min(#web_search, #crawl_page), each counting distinct closed calls (a call that repeats an
    earlier one of the same tool adds nothing: repeating a search is no research)."""
    seen: dict[str, set] = {tag: set() for tag in TOOL_TAGS}
    for s in parse(text):
        if s.tag in seen and s.closed and s.opened:
            seen[s.tag].add(_call_key(s))
    return min(len(keys) for keys in seen.values())


def tool_reward(text: str, *, low: int = TOOL_LOW, high: int = TOOL_HIGH,
                over_penalty: float = TOOL_OVER_PENALTY) -> float:
    """R_tool with N = `tool_n(text)` (min(#web_search, #crawl_page), distinct calls): N < low -> 0;
    N > high -> over_penalty; otherwise (N - low) / (high - low), so N = low gives 0 and N = high gives 1."""
    n = tool_n(text)
    if n < low:
        return 0.0
    if n > high:
        return float(over_penalty)
    return (n - low) / (high - low) if high > low else 1.0


# ------------------------------------------------------------------------------------------------ prompt
def system_prompt() -> str:
    """The policy's system prompt: the protocol, its tags and tool syntax. The question is the user message."""
    return """You are a deep research assistant. Answer the user's question with a well-researched, cited report, \
working in the following protocol. Write only these tags, each opened and closed, never nested:

<subtask_list> a list of 3-6 orthogonal sub-questions that together cover the question, one per line "- ..." </subtask_list>
Then, for each sub-question in turn:
<subtask> the sub-question </subtask>
<think> your reasoning: what you know, what is missing, what to do next </think>
<plan> the next research steps </plan>
a tool call, either
<web_search>query=first query | second query&num=10</web_search>
  (queries separated by "|"; num results per query, default 10, at most 20) or
<crawl_page>url=https://a.example/page | https://b.example/page</crawl_page>
  (URLs separated by "|"; returns a summary of the pages)
After each tool call stop writing: the environment answers with <observation> ... </observation>. Never write \
<observation> yourself. Continue with <think> and further tool calls until the sub-question is answered, then
<subtask_answer> the sub-report, citing sources inline as [1], [2], with its reference list </subtask_answer>
After the last sub-question:
<suggested_answer> the final report in the language of the question: introduction, body, conclusion, and a \
"References" section with one entry per line "[n]. URL - Title"; inline citations [n] refer to it \
</suggested_answer>"""

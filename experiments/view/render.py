"""One trajectory as HTML, element by element, with `oresearcher.protocol` doing all the reading.

Each element of the protocol is drawn as what it is: the subtask list, each subtask as a section head, think
and plan, each tool call with its parsed arguments and its observation folded in a `<details id="obs-K">`, each
sub-report, and the final report. In every report, a citation `[n]` links to the URL of its reference entry
and, beside it, to the observation where that URL was read: the crawl that fetched it, else the first
observation that shows it (the funnel's own test, `url in observation`). A citation whose URL appears in no
observation, or whose number has no reference entry, is marked.
"""
from __future__ import annotations

import dataclasses
from html import escape

from oresearcher import protocol

LABELS = {"subtask_list": "subtasks", "think": "think", "plan": "plan", "subtask_answer": "sub-report",
          "suggested_answer": "final report"}


@dataclasses.dataclass
class Observation:
    number: int
    body: str
    crawled: tuple[str, ...]     # the URLs its crawl_page call fetched (empty for a search)


class Evidence:
    """The observations of one trajectory, and where each URL was read."""

    def __init__(self, spans: list[protocol.Span]):
        self.observations: list[Observation] = []
        crawled: tuple[str, ...] = ()
        for s in spans:
            if s.tag in protocol.TOOL_TAGS:
                call = protocol.parse_tool_call(s.tag, s.body)
                crawled = tuple(call.urls) if isinstance(call, protocol.CrawlPage) else ()
            elif s.tag == "observation":
                self.observations.append(Observation(len(self.observations) + 1, s.body, crawled))
                crawled = ()
        self._where: dict[str, list[int]] = {}

    def read_in(self, url: str) -> tuple[list[int], list[int]]:
        """(observations of crawls that fetched `url`, other observations that show it), by number."""
        if url not in self._where:
            crawls = [o.number for o in self.observations if url in o.crawled]
            shown = [o.number for o in self.observations if url in o.body and o.number not in crawls]
            self._where[url] = (crawls, shown)
        return self._where[url]

    def first(self, url: str) -> int | None:
        """Where `url` was read: the first crawl of it, else the first observation that shows it."""
        crawls, shown = self.read_in(url)
        return (crawls + shown)[0] if crawls or shown else None


# ------------------------------------------------------------------------------------------------ reports
def report_html(report: str, evidence: Evidence, anchor: str) -> str:
    """A report line by line: reference entries as a list with where each URL was read, every other line with
    its citations linked. `anchor` prefixes the ids of the entries (`<anchor>-ref-<n>`)."""
    references: dict[int, tuple[str, str]] = {}
    for n, url, title in protocol.parse_references(report):
        references.setdefault(n, (url, title))
    out = []
    for line in report.splitlines():
        entry = protocol.parse_references(line)
        if entry:
            out.append(_reference_html(*entry[0], evidence, anchor))
            continue
        html = _cited_line(line, references, evidence, anchor)
        out.append(f'<div class="h">{html}</div>' if line.lstrip().startswith("#") else html + "\n")
    return "".join(out)


def _reference_html(n: int, url: str, title: str, evidence: Evidence, anchor: str) -> str:
    crawls, shown = evidence.read_in(url)
    links = [f"{what} " + ", ".join(f'<a class="obs-link" href="#obs-{k}">observation {k}</a>' for k in numbers[:4])
             + (f" and {len(numbers) - 4} more" if len(numbers) > 4 else "")
             for what, numbers in (("crawled in", crawls), ("shown in", shown)) if numbers]
    read = "; ".join(links) or '<span class="unobserved-note">appears in no observation</span>'
    cls = "ref" if links else "ref unobserved"
    return (f'<div class="{cls}" id="{anchor}-ref-{n}">[{n}] <a href="{escape(url)}" target="_blank" '
            f'rel="noreferrer">{escape(url)}</a>{" – " + escape(title) if title else ""} · {read}</div>')


def _cited_line(line: str, references: dict[int, tuple[str, str]], evidence: Evidence, anchor: str) -> str:
    out, pos = [], 0
    for start, end, numbers in protocol.citation_spans(line):
        out.append(escape(line[pos:start]))
        out.append("[" + ", ".join(_citation(n, references, evidence, anchor) for n in numbers) + "]")
        pos = end
    out.append(escape(line[pos:]))
    return "".join(out)


def _citation(n: int, references: dict[int, tuple[str, str]], evidence: Evidence, anchor: str) -> str:
    if not references:   # a sub-report without its own reference list: nothing to resolve against
        return str(n)
    if n not in references:
        return f'<span class="cite missing" title="no reference entry [{n}]">{n}?</span>'
    url, title = references[n]
    where = evidence.first(url)
    tip = escape(f"{title} — {url}" if title else url)
    if where is None:
        return (f'<a class="cite unobserved" href="{escape(url)}" target="_blank" rel="noreferrer" '
                f'title="{tip} (appears in no observation)">{n}⚠</a>')
    return (f'<a class="cite" href="{escape(url)}" target="_blank" rel="noreferrer" title="{tip}">{n}</a>'
            f'<a class="obs-link" href="#obs-{where}" title="read in observation {where}">↗</a>')


# ------------------------------------------------------------------------------------------------ elements
def trajectory_html(text: str, final_report: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(HTML of the whole trajectory, table of contents as [(anchor, label)]). `final_report` is drawn when
    the text has no <suggested_answer> of its own (a record that stores the report beside the trajectory)."""
    spans = protocol.parse(text)
    evidence = Evidence(spans)
    reports = [s.body for s in spans if s.tag in ("subtask_answer", "suggested_answer")] + [final_report or ""]
    cited = {url for body in reports for _, url, _ in protocol.parse_references(body)}
    out, toc = [], []
    subtask = call = sub_report = observed = 0
    for s in spans:
        quirks = _quirks(s)
        if s.tag is None:
            out.append(f'<div class="el free"><span class="tag">text outside elements</span>'
                       f'<div class="body">{escape(s.body.strip())}</div></div>')
        elif s.tag == "subtask_list":
            items = [line.strip().lstrip("-*• ").strip() for line in s.body.splitlines() if line.strip()]
            lis = "".join(f"<li>{escape(i)}</li>" for i in items)
            out.append(f'<div class="el subtask_list" id="subtasks"><span class="tag">subtasks</span>{quirks}'
                       f"<ol>{lis}</ol></div>")
            toc.append(("subtasks", "subtask list"))
        elif s.tag == "subtask":
            subtask += 1
            out.append(f'<h2 class="el subtask" id="subtask-{subtask}"><span class="tag">subtask {subtask}</span>'
                       f"{quirks} {escape(s.body.strip())}</h2>")
            toc.append((f"subtask-{subtask}", f"{subtask}. {s.body.strip()[:80]}"))
        elif s.tag in protocol.TOOL_TAGS:
            call += 1
            out.append(_call_html(s, call, quirks))
        elif s.tag == "observation":
            out.append(_observation_html(evidence.observations[observed], quirks, cited))
            observed += 1
        elif s.tag in ("subtask_answer", "suggested_answer"):
            if s.tag == "subtask_answer":
                sub_report += 1
                anchor, label = f"subreport-{sub_report}", f"sub-report {sub_report}"
            else:
                anchor, label = "report", "final report"
                toc.append((anchor, label))
            out.append(f'<div class="el {s.tag}" id="{anchor}"><span class="tag">{label}</span>{quirks}'
                       f'<div class="body">{report_html(s.body.strip(), evidence, anchor)}</div></div>')
        else:
            out.append(f'<div class="el {s.tag}"><span class="tag">{LABELS.get(s.tag, s.tag)}</span>{quirks}'
                       f'<div class="body">{escape(s.body.strip())}</div></div>')
    if final_report and not any(s.tag == "suggested_answer" for s in spans):
        out.append(f'<div class="el suggested_answer" id="report"><span class="tag">final report (stored beside '
                   f'the trajectory)</span><div class="body">{report_html(final_report, evidence, "report")}'
                   f"</div></div>")
        toc.append(("report", "final report"))
    return "".join(out), toc


def report_only_html(report: str) -> str:
    """A record that stores a report and no trajectory: citations link to their URLs; nothing was observed."""
    return (f'<div class="el suggested_answer" id="report"><span class="tag">final report (no trajectory '
            f'stored)</span><div class="body">{report_html(report, Evidence([]), "report")}</div></div>')


def _quirks(s: protocol.Span) -> str:
    marks = []
    if s.tag is not None and not s.opened:
        marks.append(f"&lt;{s.tag}&gt; missing")
    if s.tag is not None and not s.closed:
        marks.append(f"&lt;/{s.tag}&gt; missing")
    return "".join(f'<span class="quirk">{m}</span>' for m in marks)


def _call_html(s: protocol.Span, number: int, quirks: str) -> str:
    call = protocol.parse_tool_call(s.tag, s.body)
    if isinstance(call, protocol.WebSearch):
        args = "".join(f"<li>{escape(q)}</li>" for q in call.queries)
        detail = f'<ul class="args">{args}</ul><span class="num">{call.num} results per query</span>'
    elif isinstance(call, protocol.CrawlPage):
        args = "".join(f'<li><a href="{escape(u)}" target="_blank" rel="noreferrer">{escape(u)}</a></li>'
                       for u in call.urls)
        goal = f'<div class="goal">goal: {escape(call.goal)}</div>' if call.goal else ""
        detail = f'<ul class="args">{args}</ul>{goal}'
    else:
        detail = f'<div class="malformed">malformed call: {escape(call.reason)}</div><pre>{escape(s.body)}</pre>'
    return (f'<div class="el call {s.tag}" id="call-{number}"><span class="tag">{s.tag} #{number}</span>{quirks}'
            f"{detail}</div>")


def _observation_html(obs: Observation, quirks: str, cited: set[str]) -> str:
    body = obs.body.strip("\n")
    first = next((line.strip() for line in body.splitlines() if line.strip()), "(empty)")
    return (f'<details class="obs" id="obs-{obs.number}"><summary><span class="tag">observation {obs.number}'
            f'</span>{quirks} {escape(first[:120])} <span class="size">{len(body):,} chars</span></summary>'
            f"<pre>{_marked(body, cited)}</pre></details>")


def _marked(body: str, urls: set[str]) -> str:
    """`body` escaped, with every occurrence of a URL some report cites highlighted (the longest one where
    two start at the same place)."""
    hits = []
    for url in urls:
        at = body.find(url)
        while at >= 0:
            hits.append((at, at + len(url)))
            at = body.find(url, at + 1)
    out, pos = [], 0
    for start, end in sorted(hits, key=lambda h: (h[0], -h[1])):
        if start < pos:
            continue
        out.append(f'{escape(body[pos:start])}<mark class="cited">{escape(body[start:end])}</mark>')
        pos = end
    out.append(escape(body[pos:]))
    return "".join(out)


def prefixed(html: str, prefix: str) -> str:
    """`html` of this module with `prefix` on every element id and every in-page link, so two traces can share
    a page. Safe as a plain replacement: every id and href here is ours, and record text is escaped (a quote
    in it is &quot;), so `id="` and `href="#` occur only where this module wrote them."""
    return html.replace(' id="', f' id="{prefix}').replace(' href="#', f' href="#{prefix}')

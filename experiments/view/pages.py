"""The two pages: the index of records and one trace. Plain HTML, one stylesheet and a few lines of JavaScript
inline (opening the observation a citation points at); nothing is fetched from outside."""
from __future__ import annotations

import json
from html import escape
from urllib.parse import urlencode

from experiments.view import render
from experiments.view.sources import CATEGORIES, Catalog, Source, Summary, Trace

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
a{color:#1859b5;text-decoration:none} a:hover{text-decoration:underline}
header{background:#fff;border-bottom:1px solid #dde1e6;padding:12px 24px}
header h1{font-size:19px;margin:4px 0} .sub{color:#5b6672;font-size:13px}
.wrap{padding:16px 24px} table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e5e8ec;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600;font-size:13px} td.num{text-align:right;white-space:nowrap}
.cat{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;background:#e5e8ec}
.cat.accepted,.cat.kept,.cat.report{background:#d8f0dc} .cat.rejected,.cat.unreadable{background:#f8d7d7}
.cat.dropped,.cat.abstained,.cat.no.report{background:#fbeccd}
form.filter{margin:8px 0 12px;display:flex;gap:8px} form.filter input[type=text]{flex:1;padding:5px}
.sources{display:flex;flex-direction:column;gap:8px;margin-bottom:12px}
.source{background:#fff;border:1px solid #dde1e6;border-radius:4px;padding:8px 12px}
.source img{max-width:100%;display:block;margin-top:6px}
.layout{display:grid;grid-template-columns:minmax(0,1fr) 330px;gap:18px;padding:16px 24px}
aside{position:sticky;top:8px;align-self:start;max-height:calc(100vh - 16px);overflow:auto}
.panel{background:#fff;border:1px solid #dde1e6;border-radius:4px;padding:8px 10px;margin-bottom:10px}
.panel h3{font-size:13px;margin:0 0 6px;text-transform:uppercase;letter-spacing:.04em;color:#5b6672}
.panel table td{padding:2px 4px;border:0;font-size:13px} .panel ul{margin:0;padding-left:18px}
.el{background:#fff;border:1px solid #dde1e6;border-left:4px solid #aab3bd;border-radius:4px;
    padding:6px 10px;margin:6px 0}
.tag{font:600 11px/1.6 ui-monospace,monospace;text-transform:uppercase;color:#5b6672;margin-right:6px}
.body{white-space:pre-wrap;overflow-wrap:anywhere}
h2.subtask{font-size:16px;margin:22px 0 6px;border:0;border-top:2px solid #1859b5;border-radius:0;
    background:none;padding:8px 0 0}
.think{border-left-color:#9aa5b1;color:#39424c} .think .body{font-style:italic}
.plan{border-left-color:#7c5cc4} .call{border-left-color:#d98a00;background:#fffaf0}
.call ul.args{margin:2px 0;padding-left:18px;font-family:ui-monospace,monospace;font-size:13px}
.num,.goal{color:#5b6672;font-size:12px} .malformed{color:#b3261e}
details.obs{background:#fbfbfc;border:1px solid #dde1e6;border-left:4px solid #d98a00;border-radius:4px;
    margin:0 0 8px 24px;padding:4px 10px}
details.obs summary{cursor:pointer;color:#39424c;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
details.obs pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12.5px;max-height:560px;overflow:auto}
.size{color:#8a949e;font-size:12px} .flash{outline:3px solid #f2b01e} mark.cited{background:#fff0a8}
.subtask_answer{border-left-color:#2e8b57} .suggested_answer{border-left-color:#1859b5;border-width:1px 1px 1px 6px}
.subtask_list ol{margin:4px 0;padding-left:22px} .free{border-left-color:#b3261e;color:#5b6672}
.quirk{font-size:11px;background:#f8d7d7;color:#8c1d18;border-radius:3px;padding:0 5px;margin-right:4px}
a.cite{font-weight:600} a.obs-link{font-size:11px;margin-left:1px}
.cite.unobserved{color:#b3261e} .cite.missing{color:#b3261e;font-weight:600}
.ref{font-size:13px;margin:2px 0} .ref.unobserved{background:#fdeeee}
.unobserved-note{color:#b3261e;font-weight:600} .h{font-weight:700;margin-top:6px}
.reasons li{font-size:13px;font-family:ui-monospace,monospace} .more{margin:12px 0}
pre.meta{font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.compare{display:grid;gap:14px;padding:16px 24px} .col{min-width:0} h2.col-head{font-size:15px;margin:0 0 8px}
.panels{display:flex;flex-wrap:wrap;gap:0 8px} .panels .panel{flex:1 1 200px}
"""

# Opening the observation a link points at (a closed <details> would hide the target; a second click on the
# same link changes no hash, hence the click handler), and the open/close-all buttons.
SCRIPT = """
function openTarget(){const id=decodeURIComponent(location.hash.slice(1));const el=id&&document.getElementById(id);
 if(!el)return;if(el.tagName==='DETAILS')el.open=true;el.scrollIntoView({block:'start'});el.classList.add('flash');
 setTimeout(()=>el.classList.remove('flash'),1600);}
window.addEventListener('hashchange',openTarget);window.addEventListener('DOMContentLoaded',openTarget);
document.addEventListener('click',e=>{const a=e.target.closest('a[href^="#"]');
 if(a&&a.getAttribute('href')===location.hash)setTimeout(openTarget,0);});
function setAll(open){document.querySelectorAll('details.obs').forEach(d=>d.open=open);}
"""


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style>'
            f"<script>{SCRIPT}</script></head><body>{body}</body></html>")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "n/a"
    return str(v)


def _table(items: dict) -> str:
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _category(summary: Summary) -> str:
    return f'<span class="cat {escape(summary.category)}">{escape(summary.category)}</span>'


# ------------------------------------------------------------------------------------------------ index
def _source_html(source: Source) -> str:
    counts = ", ".join([f"{part.file.path.name}: {part.file.count():,} line(s)"
                        + ("" if part.file.indexed else " (indexing…)") for part in source.parts]
                       + (["metrics.jsonl"] if source.metrics_path else []))
    extra = ""
    if source.summary_json:
        keys = ("accepted", "rejected", "pending", "rejections_per_reason", "wall_time_s")
        extra = " · " + escape(", ".join(f"{k} {json.dumps(source.summary_json[k], ensure_ascii=False)}"
                                         for k in keys if k in source.summary_json))
    plot = ""
    if source.metrics_path is not None:
        # data-loaded marks an image the browser decoded (a broken one never fires onload)
        plot = (f'<img id="plot-{source.index}" src="/plot/{source.index}.png" alt="metrics of {escape(source.name)} '
                'per step" onload="this.dataset.loaded=this.naturalWidth">')
    return (f'<div class="source"><b>{escape(source.name)}</b> <span class="sub">{escape(str(source.path))}</span>'
            f'<div class="sub">{escape(counts)}{extra}</div>{plot}</div>')


def index_page(catalog: Catalog, text: str, category: str, start: str | None) -> str:
    rows, following = catalog.listing(text, category, start)
    options = "".join(f'<option value="{c}"{" selected" if c == category else ""}>{c or "any outcome"}</option>'
                      for c in ("",) + CATEGORIES)
    table = "".join(
        f'<tr><td>{escape(catalog.sources[int(r.key.split(".")[0])].path.name)}</td>'
        f'<td><a href="/t/{r.key}">{escape(r.id)}</a></td><td class="q">{escape(r.question[:300])}</td>'
        f"<td>{_category(r)} {escape(r.outcome)}</td><td class=num>{_fmt(r.tool_calls)}</td>"
        f"<td class=num>{'' if r.tokens is None else f'{r.tokens:,}'}</td></tr>" for r in rows)
    more = ""
    if following:
        link = "/?" + urlencode({"q": text, "outcome": category, "start": following})
        more = f'<div class="more"><a id="next" href="{escape(link)}">next page → (from {following})</a></div>'
    elif not rows:
        more = '<div class="more">no record matches.</div>'
    sources = "".join(_source_html(s) for s in catalog.sources)
    body = (f'<header><h1>Trajectories</h1><div class="sub">{len(catalog.sources)} source(s); a text filter '
            f"matches anywhere in a record (question, trajectory, report)</div></header><div class=wrap>"
            f'<div class="sources">{sources}</div>'
            f'<form class="filter" method="get" action="/"><input type="text" name="q" value="{escape(text)}" '
            f'placeholder="filter by text"><select name="outcome">{options}</select><button>filter</button></form>'
            f'<table id="records"><tr><th>source</th><th>id</th><th>question</th><th>outcome</th>'
            f"<th>tool calls</th><th>~tokens</th></tr>{table}</table>{more}</div>")
    return page("Trajectories", body)


# ------------------------------------------------------------------------------------------------ trace
def _trace_main(trace: Trace) -> tuple[str, list[tuple[str, str]]]:
    """The trace itself (the trajectory, or the report, or why there is none) and its table of contents."""
    s = trace.summary
    if trace.text:
        main, toc = render.trajectory_html(trace.text, trace.report)
        return ('<div class="sub"><button onclick="setAll(true)">open all observations</button> '
                '<button onclick="setAll(false)">close all</button></div>' + main), toc
    if trace.report:
        return render.report_only_html(trace.report), [("report", "final report")]
    why = ("the funnel rejected every candidate of this question; the reasons are beside it."
           if s.category == "rejected" else escape(s.outcome))
    return f'<div class="el free"><span class="tag">no trajectory stored</span><div class="body">{why}</div></div>', []


def _score_panels(trace: Trace) -> list[tuple[str, str]]:
    """Outcome, the judge's scores, the reward parts and the size of a trace, as (title, html) panels."""
    s = trace.summary
    panels = [("outcome", f"<div>{_category(s)} {escape(s.outcome)}</div>")]
    if trace.judge:
        judge = {k: v for k, v in trace.judge.items() if k not in ("scores", "details")}
        scores = trace.judge.get("scores") if isinstance(trace.judge.get("scores"), dict) else {}
        panels.append(("judge", _table({**judge, **scores})))
    if trace.reward:
        panels.append(("reward parts", _table(trace.reward)))
    counts = {"tool calls": s.tool_calls, "~tokens": s.tokens}
    panels.append(("size", _table({k: v for k, v in counts.items() if v is not None})))
    return panels


def _panels_html(panels: list[tuple[str, str]]) -> str:
    return "".join(f'<div class="panel"><h3>{escape(t)}</h3>{html}</div>' for t, html in panels)


def _source_name(catalog: Catalog, key: str) -> str:
    return catalog.sources[int(key.split(".")[0])].path.name


def trace_page(catalog: Catalog, source: Source, trace: Trace) -> str:
    s = trace.summary
    main, toc = _trace_main(trace)
    panels = _score_panels(trace)
    if toc:
        links = "".join(f'<li><a href="#{a}">{escape(label)}</a></li>' for a, label in toc)
        panels.append(("contents", f"<ul>{links}</ul>"))
    same = catalog.same_question(s.question, s.key)
    if same:
        links = "".join(f'<li><a href="/t/{o.key}">{escape(_source_name(catalog, o.key))} · {escape(o.id)}</a> '
                        f'{_category(o)} {escape(o.outcome)} · <a class="compare-link" href="/compare?k={s.key}'
                        f'&amp;k={o.key}">side by side</a></li>' for o in same)
        panels.append(("same question elsewhere", f"<ul>{links}</ul>"))
    if trace.reasons:
        items = "".join(f"<li>{escape(r)}</li>" for r in trace.reasons)
        panels.append(("rejections", f'<ul class="reasons">{items}</ul>'))
    if trace.meta:
        meta = escape(json.dumps(trace.meta, indent=1, ensure_ascii=False, default=str))
        panels.append(("record meta", f'<details><summary>show</summary><pre class="meta">{meta}</pre></details>'))
    body = (f'<header><a href="/">← all records</a><h1 id="question">{escape(s.question or s.id)}</h1>'
            f'<div class="sub">{escape(source.name)} · {escape(s.id)} · {escape(s.key)}</div></header>'
            f'<div class="layout"><main id="trace">{main}</main><aside>{_panels_html(panels)}</aside></div>')
    return page(s.question[:80] or s.id, body)


def compare_page(catalog: Catalog, traces: list[Trace]) -> str:
    """Traces side by side (the teacher's and the policy's answers to one question, say): each column its
    scores, then its trace. Element ids get a per-column prefix so every link stays inside its column."""
    columns = []
    for i, trace in enumerate(traces):
        s = trace.summary
        main, _ = _trace_main(trace)
        head = (f'<h2 class="col-head"><a href="/t/{s.key}">{escape(_source_name(catalog, s.key))} · '
                f"{escape(s.id)}</a></h2>")
        columns.append(f'<div class="col">{head}<div class="panels">{_panels_html(_score_panels(trace))}</div>'
                       f"{render.prefixed(main, f'c{i}-')}</div>")
    questions = list(dict.fromkeys(t.summary.question for t in traces))
    title = " | ".join(q or "(no question)" for q in questions)
    body = (f'<header><a href="/">← all records</a><h1 id="question">{escape(title)}</h1>'
            f'<div class="sub">{len(traces)} traces side by side</div></header>'
            f'<div class="compare" style="grid-template-columns:repeat({len(traces)},minmax(0,1fr))">'
            f'{"".join(columns)}</div>')
    return page("compare: " + title[:80], body)

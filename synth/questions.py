"""Research questions as seeds for synthesis and RL: `python -m synth questions --n N --out FILE`.

    rows = corpus_questions(n, seed=0, exclude=evaluation_sets())   # [{"id", "question", "kind", "pages"}]

Three kinds, from the embedded Wikipedia corpus: `comparison` (two related articles side by side), `multi_hop`
(how one article's subject bears on a related one's) and `causes` (causes and consequences of one subject).
Related articles are the pair whose leads share the most content words among a sample, so a comparison is of
kin subjects (two diseases, two art movements), not of random ones. With `--source llm` the configured teacher's
LLM writes the questions instead (one per line, kinds asked for in turn).

No leakage into evaluation: a question is dropped when it is about an article any evaluation question draws its
key points from, or when it shares half of its content words or more with an evaluation question (every JSONL
file under experiments/data, plus --exclude files); questions are also deduplicated among themselves.
"""
from __future__ import annotations

import json
import pathlib
import random
import re

from synth import text as text_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("comparison", "multi_hop", "causes")
TEMPLATES = {
    "comparison": "Compare {a} and {b}: what each is, how they are alike, and how and why they differ.",
    "multi_hop": "How is {a} connected to {b}, and what does understanding {a} reveal about {b}?",
    "causes": "What are the causes of {a}, what consequences has it had, and why do they matter?",
}
MAX_OVERLAP = 0.5   # share of a question's content words found in one evaluation question: above -> leakage
_SAMPLE = 400       # articles examined to find the closest kin of one article
_GIVE_UP = 500      # draws in a row without a new question: that kind has run out of subjects
MIN_KINSHIP = 0.12  # shared lead words / geometric mean of the two leads' word counts: below -> unrelated
# A `causes` subject is an event, a process or a condition, not a thing or a place: its title says so, or its
# first sentence calls it one ("X was a civil war", "X is an infectious disease").
_EVENT_WORDS = (r"(war|revolution|crisis|disease|disorder|syndrome|infection|pandemic|epidemic|famine|"
                    r"collapse|extinction|migration|reform|movement|change|warming|depression|recession|"
                    r"invasion|conflict|rebellion|uprising|disaster|pollution|deforestation|erosion|"
                    r"inflation|poverty|drought|event)s?\b")
_EVENT_TITLE = re.compile(r"\b" + _EVENT_WORDS, re.IGNORECASE)
_EVENT_LEAD = re.compile(r"\b(?:is|was|are|were) (?:a|an|the)(?: [\w-]+){0,2} " + _EVENT_WORDS, re.IGNORECASE)


def _is_event(page) -> bool:
    first = text_lib.sentences(page.text[:600])
    return bool(_EVENT_TITLE.search(page.title) or (first and _EVENT_LEAD.search(first[0])))


class Exclusions:
    """The evaluation questions a generated one must not leak into (their words and their articles)."""

    def __init__(self, rows: list[dict]):
        self.words = [frozenset(text_lib.content_words(_question(r))) for r in rows if _question(r)]
        self.urls = {k.get("url") for r in rows for k in r.get("key_points", []) if isinstance(k, dict)}
        self.urls.discard(None)

    def leaks(self, question: str, urls: list[str] = ()) -> bool:
        if any(u in self.urls for u in urls):
            return True
        words = frozenset(text_lib.content_words(question))
        return bool(words) and any(len(words & e) / len(words) >= MAX_OVERLAP for e in self.words if e)


def _question(row: dict) -> str:
    value = row.get("prompt", row.get("question", ""))
    return value if isinstance(value, str) else ""


def evaluation_sets(extra: list[str] = ()) -> Exclusions:
    """Every JSONL evaluation set under experiments/data, plus the `extra` files."""
    files = sorted((REPO / "experiments" / "data").glob("*.jsonl")) + [pathlib.Path(p) for p in extra]
    rows = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"--exclude {file}: no such file")
        with file.open(encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return Exclusions(rows)


def _subject(title: str) -> str:
    """A title as a noun phrase in a sentence: "Measles", "the French Revolution" stays as written."""
    return re.sub(r"\s*\(.*?\)\s*$", "", title).strip()


def corpus_questions(n: int, *, seed: int = 0, exclude: Exclusions | None = None) -> list[dict]:
    """Up to `n` questions from the embedded corpus, kinds in turn (module docstring); fewer when the corpus
    runs out of unused subjects."""
    from synth import corpus as corpus_lib

    pages = [p for p in corpus_lib.load().pages if len(p.text) > 400 and "(disambiguation)" not in p.title]
    lead_words = {}

    def lead(page):
        if page.url not in lead_words:
            lead_words[page.url] = frozenset(text_lib.content_words(page.text[:1500]))
        return lead_words[page.url]

    def kinship(a, b) -> float:
        wa, wb = lead(a), lead(b)
        return len(wa & wb) / ((len(wa) * len(wb)) ** 0.5 or 1)

    rng, exclude = random.Random(seed), exclude or Exclusions([])
    rows, seen = [], set()
    events = [p for p in pages if _is_event(p)]
    kinds, misses = list(KINDS), dict.fromkeys(KINDS, 0)

    def draw(kind: str) -> dict | None:
        a = rng.choice(events if kind == "causes" else pages)
        chosen = [a]
        if kind != "causes":
            others = rng.sample(pages, min(_SAMPLE, len(pages)))
            b = max((p for p in others if p.url != a.url), key=lambda p: kinship(a, p))
            if kinship(a, b) < MIN_KINSHIP:   # no kin in this sample: a pairing would be arbitrary
                return None
            chosen.append(b)
        question = TEMPLATES[kind].format(a=_subject(a.title), b=_subject(chosen[-1].title))
        key = " ".join(sorted(text_lib.content_words(question)))
        urls = [p.url for p in chosen]
        if key in seen or exclude.leaks(question, urls):
            return None
        seen.add(key)
        return {"question": question, "kind": kind, "pages": urls}

    while len(rows) < n and kinds:
        kind = kinds[len(rows) % len(kinds)]   # in turn; a kind that runs out of subjects leaves room to the others
        row = draw(kind) if kind != "causes" or events else None
        if row is None:
            misses[kind] += 1
            if misses[kind] > _GIVE_UP:
                kinds.remove(kind)
            continue
        misses[kind] = 0
        rows.append({"id": f"gen-{len(rows) + 1:06d}", **row})
    return rows


LLM_PROMPT = ("Write {n} distinct deep-research questions, one per line, no numbering. Each needs several "
              "sources to answer. Kind: {kind} ({hint}).")
_HINTS = {"comparison": "compare two or more related subjects", "multi_hop": "link facts across several steps",
          "causes": "the causes and consequences of an event or phenomenon"}


async def llm_questions(llm, n: int, *, exclude: Exclusions | None = None, seed: int = 0) -> list[dict]:
    """`n` questions written by `llm` (an LLMClient), kinds in turn, filtered like the corpus ones."""
    exclude, rows, seen = exclude or Exclusions([]), [], set()
    for round_ in range(max(3, n)):
        if len(rows) >= n:
            break
        kind = KINDS[round_ % len(KINDS)]
        want = min(20, n - len(rows))
        result = await llm.chat([{"role": "user", "content": LLM_PROMPT.format(n=want, kind=kind, hint=_HINTS[kind])}],
                                temperature=1.0, max_tokens=120 * want, seed=seed + round_)
        for line in result.text.splitlines():
            question = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
            key = " ".join(sorted(text_lib.content_words(question)))
            if len(question) < 15 or not question.endswith("?") or key in seen or exclude.leaks(question):
                continue
            seen.add(key)
            rows.append({"id": f"gen-{len(rows) + 1:06d}", "question": question, "kind": kind, "pages": []})
            if len(rows) >= n:
                break
    return rows


def write(rows: list[dict], out: str) -> None:
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

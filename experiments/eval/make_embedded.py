"""Build the embedded offline evaluation set: 30 research questions over the embedded Wikipedia corpus.

    python -m experiments.eval.make_embedded [--out experiments/data/embedded_eval.jsonl] [--check]

How the set is made (deterministic: no sampling, no model; the same corpus gives the same bytes):
  1. Topics. `GROUPS` below lists 30 hand-picked groups of 2-4 related corpus pages spanning the corpus's
     eleven topic categories (Arts, Biology and health sciences, Everyday life, Geography, History,
     Mathematics, People, Philosophy and religion, Physical sciences, Society and social sciences,
     Technology; 2-4 groups each), each with one open research question that needs every page of its group.
  2. Sentences. Each page's text (a Wikipedia lead section) is split into sentences; sentences shorter than
     40 or longer than 360 characters are not used as key points (fragments, run-ons).
  3. Key points, per page: the lead sentence (Wikipedia's definition of the subject) plus the most salient
     other sentences, salience = 2 x (figures and years, at most 2) + (capitalised words not at the start,
     at most 4) + (content words, at most 12) / 4; ties go to the earlier sentence. Three key points per page
     in 2-page groups, two per page otherwise, so a question has 6-8 key points (fewer
     where a lead section has fewer usable sentences; never fewer than 4). They are kept in page
     order and sentence order, verbatim: short extracted sentences, never whole pages.
  4. Rows: {id, topic, language, prompt, pages: [{title, url}], key_points: [{text, url}]} (the benchmark's
     query layout plus the gold material), written sorted by id.
The corpus text is CC BY-SA (Wikipedia); the key points are short quotations with their source URLs.
`--check` rebuilds in memory and fails if the file on disk differs (CI guards the committed file with it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "embedded_eval.jsonl"

# (category, pages, question): every page title must exist in the corpus (the builder checks).
GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Arts", ("Baroque architecture", "Rococo"),
     "How did Baroque architecture develop, and how did the Rococo style grow out of it and differ from it?"),
    ("Arts", ("Futurism", "Surrealism", "Pop art"),
     "Compare Futurism, Surrealism and Pop art: when and where each arose, what each sought to express, "
     "and who led them."),
    ("Arts", ("Ancient Egyptian architecture", "Great Pyramid of Giza", "Ancient Greek architecture", "Parthenon"),
     "Compare ancient Egyptian and ancient Greek architecture: their periods, styles, landmark buildings such "
     "as the Great Pyramid and the Parthenon, and lasting influence."),
    ("Biology and health sciences", ("Photosynthesis", "Cellular respiration", "Adenosine triphosphate"),
     "How do photosynthesis and cellular respiration store and release energy, and what role does ATP play "
     "in each?"),
    ("Biology and health sciences", ("Chickenpox", "Measles", "Scarlet fever"),
     "Compare chickenpox, measles and scarlet fever: their causes, symptoms, spread and prevention."),
    ("Biology and health sciences", ("Malaria", "Mosquito"),
     "What is the relationship between mosquitoes and malaria, and how much harm does the disease do "
     "worldwide?"),
    ("Everyday life", ("Skiing", "Luge", "Winter Olympic Games"),
     "How did skiing and luge develop as sports, and how do they fit into the history of the Winter "
     "Olympic Games?"),
    ("Everyday life", ("Brewing", "Beer", "Rum"),
     "How are beer and rum made, and how does brewing differ from the making of distilled spirits?"),
    ("Geography", ("Great Barrier Reef", "Coral reef"),
     "What are coral reefs, and what makes the Great Barrier Reef exceptional among them, including the "
     "threats it faces?"),
    ("Geography", ("Iceland", "Mid-Atlantic Ridge", "Plate tectonics"),
     "How does Iceland's position on the Mid-Atlantic Ridge explain its geology, in the light of plate "
     "tectonics?"),
    ("Geography", ("Zambezi", "Victoria Falls"),
     "Describe the Zambezi river and Victoria Falls: their geography, size, and importance to the "
     "surrounding countries."),
    ("History", ("Manhattan Project", "Enrico Fermi", "Nuclear weapon"),
     "What was the Manhattan Project, what role did Enrico Fermi play in it, and how did it shape the "
     "history of nuclear weapons?"),
    ("History", ("Hanseatic League", "Republic of Venice", "Dutch East India Company"),
     "How did the Hanseatic League, the Republic of Venice and the Dutch East India Company organise "
     "long-distance trade, and how did their power compare?"),
    ("History", ("Alexander the Great", "Seleucid Empire", "Ptolemaic Kingdom"),
     "How was Alexander the Great's empire divided after his death, and how did the Seleucid Empire and the "
     "Ptolemaic Kingdom compare?"),
    ("Mathematics", ("Probability theory", "Probability distribution", "Law of large numbers"),
     "Explain the foundations of probability theory, what probability distributions are, and what the law "
     "of large numbers guarantees."),
    ("Mathematics", ("Theory of computation", "Computational complexity theory", "P versus NP problem"),
     "What do the theory of computation and computational complexity theory study, and why is the P versus "
     "NP problem considered so important?"),
    ("Mathematics", ("Abstract algebra", "Group theory", "Field (mathematics)"),
     "What are groups and fields in abstract algebra, and how are they used in mathematics and the "
     "sciences?"),
    ("People", ("Marie Curie", "Pierre Curie", "Radioactive decay"),
     "What did Marie and Pierre Curie discover about radioactivity, and what is radioactive decay?"),
    ("People", ("Thomas Hobbes", "John Locke", "Jeremy Bentham"),
     "Compare the political and moral philosophies of Thomas Hobbes, John Locke and Jeremy Bentham."),
    ("People", ("James Watt", "Steam engine", "Industrial Revolution"),
     "How did James Watt's improvements to the steam engine contribute to the Industrial Revolution?"),
    ("Philosophy and religion", ("Buddhism", "Theravada", "Mahayana", "Zen"),
     "Compare the main branches of Buddhism (Theravada, Mahayana and Zen) in their teachings and "
     "geographic spread."),
    ("Philosophy and religion", ("Deontology", "Utilitarianism", "Virtue"),
     "Compare deontology, utilitarianism and virtue ethics as ways of judging right action."),
    ("Philosophy and religion", ("Ancient Egyptian religion", "Horus", "Amun"),
     "What were the main features of ancient Egyptian religion, and what roles did the gods Horus and Amun "
     "play in it?"),
    ("Physical sciences", ("Standard Model", "Higgs boson", "Muon"),
     "What is the Standard Model of particle physics, and where do the Higgs boson and the muon fit in it?"),
    ("Physical sciences", ("Weathering", "Erosion", "Soil formation"),
     "How do weathering and erosion shape landscapes, and how do they contribute to the formation of soil?"),
    ("Physical sciences", ("Interstellar medium", "Nebula", "Star formation"),
     "How do stars form from the interstellar medium, and what role do nebulae play in the process?"),
    ("Society and social sciences", ("Egyptian hieroglyphs", "Phoenician alphabet", "Writing system"),
     "How did writing develop from Egyptian hieroglyphs to the Phoenician alphabet, and what kinds of "
     "writing systems exist?"),
    ("Society and social sciences", ("Gross domestic product", "Inflation"),
     "What do gross domestic product and inflation measure, and how are they used to judge the health of "
     "an economy?"),
    ("Technology", ("Hydroelectricity", "Dam", "Renewable energy"),
     "What role does hydroelectricity play among renewable energy sources, and how do dams make it "
     "possible?"),
    ("Technology", ("Telegraphy", "Radio broadcasting", "Email"),
     "How did long-distance communication evolve from telegraphy to radio broadcasting and email?"),
)

MIN_CHARS, MAX_CHARS = 40, 360
# A sentence ends at . ! ? followed by space and an upper-case letter, digit or quote; "c. 1500" and
# "e.g. the" stay whole because the next character is not upper case (digits after "c." are rare enough).
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_FIGURE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(" ".join(text.split())) if s.strip()]


def salience(sentence: str) -> float:
    words = _WORD.findall(sentence)
    capitalised = sum(1 for w in words[1:] if w[0].isupper())
    content = sum(1 for w in words if len(w) > 3)
    return 2 * min(len(_FIGURE.findall(sentence)), 2) + min(capitalised, 4) + min(content, 12) / 4


def key_points(text: str, k: int) -> list[str]:
    """The lead sentence plus the k-1 most salient usable others, in text order."""
    sents = split_sentences(text)
    usable = [(i, s) for i, s in enumerate(sents) if MIN_CHARS <= len(s) <= MAX_CHARS]
    if not usable:
        return []
    lead, rest = usable[0], usable[1:]
    ranked = sorted(rest, key=lambda p: (-salience(p[1]), p[0]))[:k - 1]
    return [s for _, s in sorted([lead] + ranked)]


def load_pages() -> dict[str, tuple[str, str]]:
    """title -> (url, text) for every page of the embedded corpus (read at run time from its package)."""
    from synth import corpus

    return {p.title: (p.url, p.text) for p in corpus.load().pages}


def build(pages: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    pages = load_pages() if pages is None else pages
    rows = []
    for n, (topic, titles, question) in enumerate(GROUPS, 1):
        missing = [t for t in titles if t not in pages]
        if missing:
            raise ValueError(f"group {n} ({question[:40]}...): pages {missing} are not in the corpus; "
                             "the corpus package version changed, pick other pages")
        k = 3 if len(titles) == 2 else 2
        points = [{"text": s, "url": pages[t][0]} for t in titles for s in key_points(pages[t][1], k)]
        if len(points) < 4:
            raise ValueError(f"group {n}: only {len(points)} key points; its pages are too short, pick others")
        rows.append({"id": f"emb-{n:02d}", "topic": topic, "language": "en", "prompt": question,
                     "pages": [{"title": t, "url": pages[t][0]} for t in titles], "key_points": points})
    return rows


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="fail if --out differs from a fresh build")
    args = ap.parse_args(argv)
    text = dumps(build())
    if args.check:
        on_disk = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if on_disk != text:
            print(f"{args.out} differs from a fresh build; rerun without --check to regenerate it")
            return 1
        print(f"{args.out}: up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    print(f"wrote {len(rows)} questions, {sum(len(r['key_points']) for r in rows)} key points to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

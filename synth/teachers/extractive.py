"""The embedded teacher: no LLM. Retrieval, sentence selection and templated think/plan over the local corpus.

planner     finds the question's own subjects: the corpus article titles the question names (longest first,
            "Cellular respiration" before "Respiration", a plural folded: "mosquitoes" names "Mosquito"; a lone
            common word such as "matter" names nothing), else its capitalised names, else its key terms. Sub-queries
            come from those subjects and the question's aspects: one "What is S?" per subject, one on how the
            subjects relate (two or more) or on the causes and consequences the question asks about, and, when
            fewer than three, the question's key facts and figures. Nothing outside the question's subjects is
            planned (a related article is read when a search finds it, not made a sub-query of its own).
researcher  think + plan -> web_search (the sub-query's subjects, and the subjects expanded with the question's
            key terms) -> think (which hits look relevant: the subject's own article first) -> crawl_page (the
            best unread hits, goal = the sub-query) -> think (what the pages say) -> either one more search/crawl
            round when the evidence is thin and the budget allows, or the sub-report: the observed sentences that
            share most content words with the question and the sub-query (the subject's defining lead sentence
            first, facts with figures preferred), each cited [n] to the page it came from;
summarizer  introduction, one section per sub-query (the renumbered sub-reports), a conclusion built from the
            strongest cited sentence of each section.
Every sentence in a sub-report is copied from an observation of that research, so every citation is supported.
`rng` varies the number of sub-queries, hits read and sentences kept, so the 3 candidates of a question differ.
"""
from __future__ import annotations

import functools
import random
import re

from synth import text as text_lib
from synth.teachers import Step

_SECTION = re.compile(r"^## \[(.*?)\]\((\S+?)\)\s*\nSource: \S+\s*\n(.*?)(?=^## \[|\Z)", re.MULTILINE | re.DOTALL)
_TOKEN = re.compile(r"[^\W_][\w'’-]*", re.UNICODE)
_FIGURE = re.compile(r"\b\d[\d,.]*\b")
_QUALIFIER = re.compile(r"\s*\(.*?\)\s*$")
MAX_PHRASE = 6
# Words that say what a question asks (its aspects), not what it is about: never a subject, never a search term.
ASPECT_WORDS = frozenset("""
compare comparison contrast differ differs different difference differences alike similar similarity similarities
connected connection connections relationship relationships related relate relates reveal reveals revealed
understanding understand explain explains describe describes discuss trace cause causes caused consequence
consequences effect effects impact impacts matter matters role roles play plays played history origins origin
develop developed development significance significant influence influenced influences important importance
main key way ways today later each both what whose kind kinds work works led lead leads change changed changes
fact facts figure figures date dates feature features defining reported source sources say says
""".split())


def key_terms(text: str, limit: int = 6) -> list[str]:
    """The text's content words, aspect words aside, in order, each once."""
    return list(dict.fromkeys(w for w in text_lib.content_words(text) if w not in ASPECT_WORDS))[:limit]


def _focus(question: str) -> str:
    """The question as a phrase to embed in sentences ("What caused X?" -> "what caused X")."""
    q = " ".join(question.split()).rstrip("?.!")
    return (q[0].lower() + q[1:]) if q else q


def _key(phrase: str) -> str:
    words = [re.sub(r"['’]s?$", "", w.lower()) for w in _TOKEN.findall(phrase)]
    return " ".join(words[:-1] + [text_lib.fold(words[-1])]) if words else ""


@functools.lru_cache(maxsize=1)
def _title_index() -> dict[str, str]:
    """Folded title (qualifier aside) -> the corpus title; the plain title wins over qualified ones."""
    try:
        from synth import corpus as corpus_lib
        pages = corpus_lib.load().pages
    except (FileNotFoundError, OSError):   # no embedded corpus: subjects come from names and key terms
        return {}
    index: dict[str, str] = {}
    for page in pages:
        key = _key(_QUALIFIER.sub("", page.title))
        if key and (key not in index or "(" in index[key] and "(" not in page.title):
            index[key] = page.title
    return index


def subjects(text: str) -> list[str]:
    """The subjects a text names, in order: corpus titles (longest match first, none inside another), else
    capitalised names. A phrase made only of aspect words or stopwords, a lone lower-case everyday word that
    is also a title ("matter", "energy": COMMON_DF) or a verb ("train the"), is no subject; a lone lower-case
    word that is a title and a rare word ("photosynthesis") is."""
    tokens = list(_TOKEN.finditer(text))
    index = _title_index()
    taken = [False] * len(tokens)
    found: list[tuple[int, str]] = []
    for n in range(min(MAX_PHRASE, len(tokens)), 0, -1):
        for i in range(len(tokens) - n + 1):
            if any(taken[i:i + n]):
                continue
            phrase = text[tokens[i].start(): tokens[i + n - 1].end()]
            words = [t.group(0) for t in tokens[i:i + n]]
            content = [w for w in text_lib.content_words(phrase) if w not in ASPECT_WORDS]
            if not content or words[0].lower() in text_lib.STOPWORDS or words[-1].lower() in text_lib.STOPWORDS:
                continue
            title = index.get(_key(phrase))
            if title is None:
                continue
            if n == 1 and not (words[0][:1].isupper() and i > 0) and not words[0].isupper() and (
                    _common(words[0]) or _verb_like(tokens, i)):
                continue
            found.append((i, title))
            taken[i:i + n] = [True] * n
    if not found:   # no corpus title: the capitalised names after the first word
        run: list[str] = []
        for i, t in enumerate(tokens + [None]):
            word = t.group(0) if t is not None else ""
            if i > 0 and word[:1].isupper() and word.lower() not in ASPECT_WORDS:
                run.append(word)
                continue
            if run:
                found.append((i, " ".join(run)))
            run = []
    return list(dict.fromkeys(title for _, title in sorted(found)))


# A lower-case word that more corpus pages than this use is an everyday word ("energy", "technology", "medicine"):
# as a one-word title it names a subject only when written as a name. Rarer words ("photosynthesis", "malaria")
# name their article.
COMMON_DF = 80


@functools.lru_cache(maxsize=1)
def _document_frequency() -> dict[str, int]:
    """Content word -> number of corpus pages using it (about 0.7 s once per process)."""
    import collections
    try:
        from synth import corpus as corpus_lib
        pages = corpus_lib.load().pages
    except (FileNotFoundError, OSError):
        return {}
    df: collections.Counter = collections.Counter()
    for page in pages:
        df.update(set(text_lib.content_words(page.text)))
    return dict(df)


def _common(word: str) -> bool:
    word = word.lower()
    df = _document_frequency()
    return word in ASPECT_WORDS or max(df.get(word, 0), df.get(text_lib.fold(word), 0)) > COMMON_DF


_DETERMINERS = frozenset("the a an its their his her our this these those".split())
_BEFORE_VERBS = frozenset("to i you he she it we they can could will would should may might must".split())


def _verb_like(tokens: list, i: int) -> bool:
    """A lower-case word used as a verb ("vaccines train the immune system", "to play", "did they travel"):
    followed by a determiner, or after "to", a pronoun or a modal; such a word names no subject even when it is
    a title ("Train", "Travel")."""
    after = tokens[i + 1].group(0).lower() if i + 1 < len(tokens) else ""
    before = tokens[i - 1].group(0).lower() if i > 0 else ""
    return after in _DETERMINERS or before in _BEFORE_VERBS


def searches_of(research) -> list:
    return [o for o in research.observed if o.tool == "web_search"]


class ExtractiveTeacher:
    name = "extractive"

    def __init__(self, tools, *, min_sentences: int = 3, search_num: int = 5, search_queries: int = 2,
                 answer_sentences: int = 6):
        """search_num: results per query; search_queries: queries per search (the subject, then the subject
        expanded); answer_sentences: at most this many sentences per sub-report (2 fewer at least). Smaller
        values make shorter trajectories (configs/synth.py teacher.*, synth.config.sized_for)."""
        self.tools = tools
        self.min_sentences = min(min_sentences, answer_sentences)
        self.search_num, self.search_queries = max(1, search_num), max(1, search_queries)
        self.answer_sentences = max(1, answer_sentences)

    # ------------------------------------------------------------------------------------------ planner
    async def plan(self, question: str, rng: random.Random) -> list[str]:
        named = subjects(question)
        if not named:   # the question names no article: its key terms are the subject
            terms = key_terms(question, 3)
            named = [" ".join(terms)] if terms else [_focus(question)]
        focus = _focus(question)
        n = rng.randint(3, 4)   # sub-queries: with one search and one crawl each, N = 3-4 of the reward's band
        subtasks = [f"What is {s}, and what are its defining features?" for s in named[: n - 1]]
        words = set(text_lib.content_words(question))
        if len(named) >= 2:
            pair = " and ".join(named[:2]) if len(named) == 2 else ", ".join(named[:-1]) + " and " + named[-1]
            subtasks.append(f"How are {pair} related, and how do they compare?")
        main = max(named, key=lambda s: len(s.split()))   # the most specific subject ("Industrial Revolution")
        if words & {"cause", "causes", "caused", "consequence", "consequences", "effect", "effects", "impact",
                    "impacts", "matter", "significance"} or len(named) < 2:
            subtasks.append(f"What causes, consequences and significance are reported for {main}?")
        if len(subtasks) < max(3, n):
            subtasks.append(f"Which key facts, figures and dates about {' and '.join(named[:2])} matter most "
                            f"for the question?")
        subject_words = {w for s in named for w in text_lib.content_words(s)}
        rest = [t for t in key_terms(question, 8) if t not in subject_words][:3]
        if len(subtasks) < n and rest:   # what else the question asks about, tied to its subject
            subtasks.append(f"What do the sources report about {main} and {', '.join(rest)}?")
        if len(subtasks) < 3:
            subtasks.append(f"What do the sources say about: {focus}?")
        return list(dict.fromkeys(subtasks))[:6]

    # ------------------------------------------------------------------------------------------ researcher
    async def step(self, question: str, research, rng: random.Random, final: bool = False) -> Step:
        searches = [o for o in research.observed if o.tool == "web_search"]
        crawls = [o for o in research.observed if o.tool == "crawl_page"]
        evidence = self._evidence(research)
        if final or (crawls and (len(evidence) >= self.min_sentences or research.calls + 2 > research.budget)):
            return self._answer(research, evidence, rng)
        if not searches or (crawls and len(crawls) >= len(searches)):
            return self._search(research, searches, evidence)
        return self._crawl(research, searches[-1], rng)

    @staticmethod
    def _subjects(research) -> list[str]:
        """The sub-query's subjects (the planner wrote them into it), else the question's."""
        return subjects(research.subtask) or subjects(research.question)

    def _search(self, research, searches, evidence) -> Step:
        named = self._subjects(research)
        terms = [t for t in key_terms(research.question, 8)
                 if t not in {w for s in named for w in text_lib.content_words(s)}]
        if not searches:
            think = (f"The sub-question is: {research.subtask} I have no evidence yet. It is about "
                     f"{', '.join(named) or 'the question itself'}; the question also asks about "
                     f"{', '.join(terms[:4]) or 'nothing more'}. I need the articles on these subjects first.")
            plan = ("1. Search for the subjects, and for the subjects together with the question's key terms.\n"
                    "2. Read the subjects' own articles and the most relevant other results.\n"
                    "3. Keep only sentences that answer the sub-question, with their sources.")
            base = " ".join(_QUALIFIER.sub("", s) for s in named) or " ".join(terms[:4]) or research.subtask
            # the subject, then the subject expanded with what this sub-query asks and the question's key terms
            subject_words = set(text_lib.content_words(base))
            asks = [w for w in text_lib.content_words(research.subtask)
                    if w not in subject_words and w not in ("reported", "answer", "question", "matter", "most", "say")]
            queries = [base, " ".join([base] + list(dict.fromkeys(asks))[:3] + terms[:2])]
        else:
            read = {p.title for o in research.observed for p in o.result.pages}
            think = (f"The pages read so far ({', '.join(sorted(read)) or 'none'}) give only {len(evidence)} "
                     f"sentence(s) on the sub-question; I need more specific sources.")
            plan = "Search again with the question's other key terms, then read the new results."
            base = " ".join(_QUALIFIER.sub("", s) for s in named[:1])
            queries = [" ".join([base] + terms[3:6]) if terms[3:6] else f"{base} facts", " ".join(terms[:5])]
        queries = [q.replace("|", " ").replace("&", " and ").strip() for q in queries if q.strip()]
        if self.search_queries == 1 and len(queries) > 1:
            # one query: the expanded one, which differs between the sub-queries (a repeated search counts once)
            queries = queries[1:] if not searches else queries[:1]
        queries = list(dict.fromkeys(queries))[: self.search_queries]
        return Step([("think", think), ("plan", plan)],
                    call=("web_search", f"query={' | '.join(queries)}&num={self.search_num}"))

    def _crawl(self, research, search, rng) -> Step:
        read = {p.url for o in research.observed for p in o.result.pages}
        named = {_QUALIFIER.sub("", s).lower() for s in self._subjects(research)}
        words = set(text_lib.content_words(research.question + " " + research.subtask)) - ASPECT_WORDS
        hits = list({h.url: h for h in search.result.hits if h.url not in read}.values())

        def rank(h):   # the subject's own article first, then titles sharing most words with the question
            own = _QUALIFIER.sub("", h.title).lower() in named
            title = set(text_lib.content_words(h.title))
            return (-own, -len(words & title), -len(words & set(text_lib.content_words(h.snippet))))
        hits.sort(key=rank)
        # The other subjects of the question have sub-queries of their own: read this one's subjects, and at most
        # one other relevant page.
        others = {_QUALIFIER.sub("", t).lower() for t in subjects(research.question)} - named
        own = [h for h in hits if _QUALIFIER.sub("", h.title).lower() in named]
        rest = [h for h in hits if h not in own and _QUALIFIER.sub("", h.title).lower() not in others
                and words & set(text_lib.content_words(h.title + " " + h.snippet))]
        # The first sub-query reads the subject itself; later ones on the same subject add one related page,
        # A different related page for each (the researchers run side by side and cannot see each other).
        if own and research.index > 0 and len(named) < 2 and rest:
            k = research.index % len(rest)   # the first sub-query may add rest[0]; the others rest[1], rest[2]
            picks = own + rest[k:k + 1]
        else:
            picks = (own + rest[: rng.randint(0, 1)]) if own else rest[: rng.randint(1, 2)]
        if not picks:   # nothing new (or nothing relevant) to read: search once more, or answer from what was read
            if len(searches_of(research)) < 2 and research.calls + 2 <= research.budget:
                return self._search(research, searches_of(research), self._evidence(research))
            return self._answer(research, self._evidence(research), rng)
        shared = sorted(words & set(text_lib.content_words(" ".join(h.title + " " + h.snippet for h in picks))))
        think = (f"The search returned {len(search.result.hits)} results. The most relevant to "
                 f"'{research.subtask}' are " + "; ".join(h.title for h in picks) +
                 f": their titles and snippets mention {', '.join(shared[:5]) or 'the topic'}.")
        goal = research.subtask.replace("|", " ")
        return Step([("think", think)], call=("crawl_page", f"url={' | '.join(h.url for h in picks)}&goal={goal}"))

    def _evidence(self, research) -> list[tuple[float, str, str, str]]:
        """(score, sentence, url, title) for every observed page sentence on the question, best first.

        Words of the question count double (a sub-query's template words alone must not pull in sentences about
        something else); another page's sentence needs two of the question's words. Every sentence of a subject's
        own article is about the subject ("He was ..." need not repeat its name): it counts, its lead sentence (the
        definition) first; a figure or a date adds a point (a fact); earlier sentences win ties."""
        asked = set(text_lib.content_words(research.question)) - ASPECT_WORDS
        words = set(text_lib.content_words(research.subtask)) - ASPECT_WORDS
        named = {_QUALIFIER.sub("", s).lower() for s in self._subjects(research)}
        out, seen = [], set()
        for o in research.observed:
            if o.tool != "crawl_page":
                continue
            for title, url, body in _SECTION.findall(o.result.observation):
                # A sub-query on several subjects (how they relate) wants what links them, not each one's
                # definition, which their own sub-queries give: no own-page bonus there.
                own = _QUALIFIER.sub("", title).lower() in named and len(named) == 1
                for position, sentence in enumerate(text_lib.sentences(body)):
                    if len(sentence) < 40 or len(sentence) > 400 or "[" in sentence or sentence in seen:
                        continue
                    have = set(text_lib.content_words(sentence))
                    lead = own and position == 0
                    score = (2 * len(asked & have) + len(words & have) + bool(_FIGURE.search(sentence)) + 3 * lead
                             + 2 * own - position / 100)
                    if own or len(asked & have) >= min(2, len(asked)):
                        out.append((score, sentence, url, title))
                        seen.add(sentence)
        out.sort(key=lambda e: -e[0])
        return out

    def _answer(self, research, evidence, rng) -> Step:
        keep = evidence[: rng.randint(max(1, self.answer_sentences - 2), self.answer_sentences)]
        if not keep:   # no sentence matched: fall back to each read page's first sentences
            for o in research.observed:
                for title, url, body in _SECTION.findall(o.result.observation):
                    keep.extend((0, s, url, title) for s in text_lib.sentences(body)[:1])
        numbers: dict[str, int] = {}
        lines = []
        for _, sentence, url, _title in keep:
            n = numbers.setdefault(url, len(numbers) + 1)
            sentence = sentence.rstrip()
            end = sentence[-1] if sentence[-1] in ".!?" else "."
            lines.append(f"{sentence.rstrip('.!?')} [{n}]{end}")
        titles = {url: title for _, _, url, title in keep}
        think = (f"The pages I read give {len(evidence)} relevant sentence(s); the strongest come from "
                 f"{', '.join(titles.values()) or 'no page'}. That is enough to answer '{research.subtask}'.")
        refs = "\n".join(f"[{n}]. {url} - {titles[url]}" for url, n in numbers.items())
        answer = " ".join(lines) + "\n\nReferences:\n" + refs if lines else \
            "The sources read do not answer this sub-question."
        return Step([("think", think)], answer=answer)

    # ------------------------------------------------------------------------------------------ summarizer
    async def summarize(self, question, subtasks, bodies, references, rng) -> str:
        used = sum(1 for _ in references)
        parts = [f"# {question.strip()}",
                 f"This report answers the question by examining {len(subtasks)} aspects: "
                 + "; ".join(s.rstrip("?") for s in subtasks) + f". It draws on {used} sources."]
        conclusion, said = [], set()
        for sub, body in zip(subtasks, bodies):
            fresh = [s for s in text_lib.sentences(body) if re.sub(r"\s*\[\d+\]", "", s) not in said]
            said.update(re.sub(r"\s*\[\d+\]", "", s) for s in fresh)
            if not any(re.search(r"\[\d+\]", s) for s in fresh):   # nothing new and cited: no section
                continue
            body = " ".join(fresh)
            parts.append(f"## {sub}\n{body}")
            first = text_lib.sentences(body)[:1]
            if first and re.search(r"\[\d+\]", first[0]):
                conclusion.append(first[0])
        parts.append("## Conclusion\nIn summary: " + " ".join(conclusion) if conclusion else
                     "## Conclusion\nThe sources gathered cover the aspects above only partially.")
        return "\n\n".join(parts)

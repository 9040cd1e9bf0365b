"""The embedded teacher: no LLM. Retrieval, sentence selection and templated think/plan over the local corpus.

planner     retrieves the question over the corpus and turns the distinct article titles it finds, plus the
            question's key terms, into 3-6 orthogonal sub-queries (overview, one per related article, context);
researcher  think + plan -> web_search (sub-query and its key terms) -> think (which hits look relevant) ->
            crawl_page (the best unread hits, goal = the sub-query) -> think (what the pages say) -> either one
            more search/crawl round when the evidence is thin, or the sub-report: the observed sentences that
            share most content words with the sub-query, each cited [n] to the page it came from;
summarizer  introduction, one section per sub-query (the renumbered sub-reports), a conclusion built from the
            strongest cited sentence of each section.
Every sentence in a sub-report is copied from an observation of that research, so every citation is supported.
`rng` varies the number of sub-queries, hits read and sentences kept, so the 3 candidates of a question differ.
"""
from __future__ import annotations

import random
import re

from synth import text as text_lib
from synth.teachers import Step

_SECTION = re.compile(r"^## \[(.*?)\]\((\S+?)\)\s*\nSource: \S+\s*\n(.*?)(?=^## \[|\Z)", re.MULTILINE | re.DOTALL)


def key_terms(text: str, limit: int = 6) -> list[str]:
    return list(dict.fromkeys(text_lib.content_words(text)))[:limit]


_WH = re.compile(r"^\s*(what|how|why|when|where|who|which|is|are|does|do|did|can)\b.*?\s", re.IGNORECASE)


def _focus(question: str) -> str:
    """The question as a phrase to embed in sub-queries ("What caused X?" -> "what caused X")."""
    q = " ".join(question.split()).rstrip("?.!")
    return (q[0].lower() + q[1:]) if q else q


def searches_of(research) -> list:
    return [o for o in research.observed if o.tool == "web_search"]


class ExtractiveTeacher:
    name = "extractive"

    def __init__(self, tools, *, min_sentences: int = 3):
        self.tools = tools
        self.min_sentences = min_sentences

    # ------------------------------------------------------------------------------------------ planner
    async def plan(self, question: str, rng: random.Random) -> list[str]:
        result = await self.tools.web_search([question], 10)
        words = set(text_lib.content_words(question))
        titles = []
        for hit in result.hits:
            if hit.title not in titles and hit.title.lower() not in question.lower():
                titles.append(hit.title)
        focus = _focus(question)
        main = result.hits[0].title if result.hits else focus
        n = rng.randint(3, 5)
        subtasks = [f"What is {main}, and what are its defining features?"]
        # Related articles give orthogonal facets; those sharing words with the question come first.
        titles.sort(key=lambda t: -len(words & set(text_lib.content_words(t))))
        for title in titles:
            if len(subtasks) >= n - 1 or title == main:
                continue
            subtasks.append(f"How does {title} bear on the question: {focus}?")
        subtasks.append(f"What causes, consequences and significance are reported for: {focus}?")
        while len(subtasks) < 3:
            subtasks.insert(-1, f"Which key facts and figures answer: {focus}?")
        return subtasks[:6]

    # ------------------------------------------------------------------------------------------ researcher
    async def step(self, question: str, research, rng: random.Random, final: bool = False) -> Step:
        sub = research.subtask
        terms = key_terms(sub + " " + question)
        searches = [o for o in research.observed if o.tool == "web_search"]
        crawls = [o for o in research.observed if o.tool == "crawl_page"]
        evidence = self._evidence(research)
        if final or (crawls and (len(evidence) >= self.min_sentences or research.calls + 2 > research.budget)):
            return self._answer(research, evidence, rng)
        if not searches or (crawls and len(crawls) >= len(searches)):
            return self._search(research, terms, searches, evidence)
        return self._crawl(research, terms, searches[-1], rng)

    def _search(self, research, terms, searches, evidence) -> Step:
        if not searches:
            think = (f"The sub-question is: {research.subtask} I have no evidence yet. Its key terms are "
                     f"{', '.join(terms) or 'the question itself'}; I need articles that define them and state "
                     f"facts about them.")
            plan = ("1. Search for the sub-question and for its key terms together.\n2. Read the most relevant "
                    "results.\n3. Keep only sentences that answer the sub-question, with their sources.")
            queries = [research.subtask, " ".join(terms[:4])]
        else:
            read = {p.title for o in research.observed for p in o.result.pages}
            think = (f"The pages read so far ({', '.join(sorted(read)) or 'none'}) give only {len(evidence)} "
                     f"sentence(s) on the sub-question; I need more specific sources.")
            plan = "Search again with narrower terms, then read the new results."
            queries = [" ".join(terms[1:5]) or research.subtask, f"{terms[0] if terms else ''} history facts"]
        queries = [q.replace("|", " ").replace("&", " and ").strip() for q in queries if q.strip()]
        return Step([("think", think), ("plan", plan)], call=("web_search", f"query={' | '.join(queries)}&num=5"))

    def _crawl(self, research, terms, search, rng) -> Step:
        read = {p.url for o in research.observed for p in o.result.pages}
        words = set(terms)
        hits = [h for h in search.result.hits if h.url not in read]
        hits.sort(key=lambda h: -len(words & set(text_lib.content_words(h.title + " " + h.snippet))))
        picks = hits[: rng.randint(2, 3)]
        if not picks:   # nothing new to read: search once more, or answer from what was read
            if len(searches_of(research)) < 2:
                return self._search(research, terms, searches_of(research), self._evidence(research))
            return self._answer(research, self._evidence(research), rng)
        think = (f"The search returned {len(search.result.hits)} results. The most relevant to "
                 f"'{research.subtask}' are " + "; ".join(f"{h.title}" for h in picks) +
                 f": their titles and snippets mention {', '.join(sorted(words & set(text_lib.content_words(' '.join(h.title + ' ' + h.snippet for h in picks))))[:5]) or 'the topic'}.")
        goal = research.subtask.replace("|", " ")
        return Step([("think", think)], call=("crawl_page", f"url={' | '.join(h.url for h in picks)}&goal={goal}"))

    def _evidence(self, research) -> list[tuple[float, str, str, str]]:
        """(score, sentence, url, title) for every observed page sentence sharing words with the sub-query."""
        # Words of the question count double: a sub-query's template words ("history", "significance") alone
        # must not pull in sentences about something else.
        asked = set(text_lib.content_words(research.question))
        words = set(text_lib.content_words(research.subtask))
        out = []
        for o in research.observed:
            if o.tool != "crawl_page":
                continue
            for title, url, body in _SECTION.findall(o.result.observation):
                for sentence in text_lib.sentences(body):
                    if len(sentence) < 40 or len(sentence) > 400 or "[" in sentence:
                        continue
                    have = set(text_lib.content_words(sentence))
                    score = 2 * len(asked & have) + len(words & have)
                    if len(asked & have) >= min(2, len(asked)):
                        out.append((score, sentence, url, title))
        out.sort(key=lambda e: -e[0])
        return out

    def _answer(self, research, evidence, rng) -> Step:
        keep = evidence[: rng.randint(3, 5)]
        if not keep:   # no sentence matched: fall back to each read page's first sentences
            for o in research.observed:
                for title, url, body in _SECTION.findall(o.result.observation):
                    keep.extend((0, s, url, title) for s in text_lib.sentences(body)[:1])
        numbers: dict[str, int] = {}
        lines = []
        for _, sentence, url, title in keep:
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
            body = " ".join(fresh) or "The sources repeat what the sections above already cover."
            parts.append(f"## {sub}\n{body}")
            first = text_lib.sentences(body)[:1]
            if first and re.search(r"\[\d+\]", first[0]):
                conclusion.append(first[0])
        parts.append("## Conclusion\nIn summary: " + " ".join(conclusion) if conclusion else
                     "## Conclusion\nThe sources gathered cover the aspects above only partially.")
        return "\n\n".join(parts)

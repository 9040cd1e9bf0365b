"""A teacher worth imitating: the embedded teacher plans from the question's own subjects, local search ranks
the articles a query names first, and on unseen questions no sub-question is off topic and most search results
are on topic (experiments/eval/teacher_quality.py's measures)."""
import asyncio

from experiments.eval.teacher_quality import off_topic, search_titles, unseen_questions, words
from oresearcher import protocol
from synth.config import load_config
from synth.funnel import Synthesizer
from synth.teachers.extractive import subjects
from synth.tools import Tools


def test_subjects_are_the_articles_the_question_names():
    assert subjects("How do photosynthesis and cellular respiration store and release energy, and what role "
                    "does ATP play in each?") == ["Photosynthesis", "Cellular respiration"]
    assert subjects("What is the relationship between mosquitoes and malaria?") == ["Mosquito", "Malaria"]
    assert subjects("How do vaccines train the immune system?") == ["Vaccine", "Immune system"]   # not "Train"
    assert subjects("Who were the Vikings, and how far did they travel?") == ["Vikings"]          # not "Travel"
    assert "Matter" not in subjects("What are the causes of the Trojan War, and why do they matter?")


def test_local_search_ranks_the_named_articles_first(tmp_path):
    async def run():
        tools = Tools.from_config({"cache_dir": str(tmp_path), "search": {"backend": "local"},
                                   "crawl": {"backend": "local"}})
        try:
            compare = await tools.web_search(["Compare Leeds and Manchester: how are they alike, how do they "
                                              "differ?"], 5)
            causes = await tools.web_search(["What are the causes of Trojan War, and why do they matter?"], 5)
            return [h.title for h in compare.hits], [h.title for h in causes.hits]
        finally:
            await tools.aclose()

    compare, causes = asyncio.run(run())
    assert set(compare[:2]) == {"Leeds", "Manchester"}
    assert causes[0] == "Trojan War" and "Matter" not in causes   # a question's common word names no article


def test_unseen_questions_get_on_topic_plans_and_searches(tmp_path):
    questions = unseen_questions(4, seed=1)
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"), "workflow.candidates": 1})

    async def run():
        synth = Synthesizer.from_config(cfg)
        try:
            return await asyncio.gather(*(synth.synthesize(q["question"], q["id"]) for q in questions))
        finally:
            await synth.aclose()

    titles = on = 0
    for q, outcome in zip(questions, asyncio.run(run())):
        assert outcome.record is not None, outcome.rejections
        text = outcome.record["messages"][2]["content"]
        subtasks = [s.body for s in protocol.parse(text) if s.tag == "subtask"]
        assert subtasks and not [s for s in subtasks if off_topic(s, q["question"])], subtasks
        hits = search_titles(text)
        titles, on = titles + len(hits), on + sum(bool(words(t) & words(q["question"])) for t in hits)
    assert on / titles >= 0.6, (on, titles)
    # the measure itself: an article the question does not name is off topic, an aspect of it is not
    question = "How do photosynthesis and cellular respiration complement each other?"
    assert off_topic(f"How does Theoretical physics bear on the question: {question.lower()}", question)
    assert not off_topic("What causes, consequences and significance are reported for Photosynthesis?", question)

"""No reward hacking: repetition, padding, invented URLs, pasted observations and off-topic sections never raise
the heuristic judge (the RL reward's R_base), the funnel's judge (report + trajectory) or the composite reward
above the honest trajectory they are made from. The honest one is the embedded teacher's; the reward is asked
over HTTP, from the judge endpoint the evaluation serves (real loopback server)."""
import asyncio
import re

import pytest

from oresearcher import protocol
from oresearcher.rl import rewards
from synth.config import load_config
from synth.funnel import Synthesizer
from synth.judge import HeuristicJudge, split_report
from synth.selection import score_candidate

QUESTION = "How do photosynthesis and cellular respiration store and release energy, and what role does ATP play?"
UNRELATED = "https://en.wikipedia.org/wiki/Jazz"


def with_report(text: str, report: str) -> str:
    return text[: text.rindex("<suggested_answer>")] + f"<suggested_answer>\n{report}\n</suggested_answer>"


def renumbered(body: str, refs: list[tuple[int, str, str]], extra: list[tuple[str, str]]) -> str:
    """body + a References list: the honest entries, then `extra` (url, title) numbered after them."""
    lines = [f"[{n}]. {url} - {title}" for n, url, title in refs]
    lines += [f"[{len(refs) + i + 1}]. {url} - {title}" for i, (url, title) in enumerate(extra)]
    return body.rstrip() + "\n\n## References\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(trajectory, report, unrelated page text) of the embedded teacher for QUESTION, and the judge's tools."""
    cache = tmp_path_factory.mktemp("hacking") / "cache"
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(cache), "workflow.candidates": 1})

    async def run():
        synth = Synthesizer.from_config(cfg)
        try:
            outcome = await synth.synthesize(QUESTION, "q")
            jazz = await synth.tools.crawl_page([UNRELATED], goal="jazz")
            return outcome, jazz
        finally:
            await synth.aclose()

    outcome, jazz = asyncio.run(run())
    assert outcome.record is not None, outcome.rejections
    return outcome.record["messages"][2]["content"], outcome.record["report"], jazz, cache


def hacks(text: str, report: str, jazz) -> dict[str, tuple[str, str]]:
    """name -> (trajectory, report) of each hack of the honest (text, report)."""
    body, _ = split_report(report)
    refs = protocol.parse_references(report)
    n = len(refs)
    sections = body[body.index("\n## "):] if "\n## " in body else body
    observations = [s.body for s in protocol.parse(text) if s.tag == "observation"]
    observed_urls = list(dict.fromkeys(re.findall(r"\]\((https://en\.wikipedia\.org/wiki/\S+?)\)", "".join(observations))))
    pasted = "\n\n".join(o.strip() for o in observations if "# Synthesis Report" in o)
    jazz_sentences = [s for s in jazz.observation.split("\n")[3].split(". ") if len(s) > 40][:3]
    # The trajectory of the off-topic hack also crawled the unrelated page, so its citations are observed ones.
    jazz_text = text.replace("<suggested_answer>", f"<crawl_page>url={UNRELATED}</crawl_page>"
                             + protocol.observation(jazz.observation) + "<suggested_answer>")
    out = {
        "repetition": (text, body.rstrip() + "\n\n" + "\n\n".join([sections.strip()] * 2) + "\n\n"
                       + report[len(body):]),
        "padding": (text, body.rstrip() + "\n\n" + (
            "Photosynthesis, cellular respiration and ATP store and release energy in every living cell. " * 40)
            + "\n\n" + report[len(body):]),
        "padding_cited": (text, body.rstrip() + "\n\n" + " ".join(
            f"Energy is stored and released by photosynthesis, respiration and ATP in way {k} [1]."
            for k in range(40)) + "\n\n" + report[len(body):]),
        "invented_urls": (text, renumbered(
            body.rstrip() + "\n\n## Further evidence\nJazz is a music genre that originated in New Orleans "
            f"[{n + 1}]. ATP synthase powers every cell with light from the moon [{n + 2}].",
            refs, [(UNRELATED, "Jazz"), ("https://example.org/atp-moon", "ATP and the moon")])),
        "pasted_observations": (text, renumbered(f"# {QUESTION}\n\n{pasted}\n\n## Conclusion\nSee the pages above [1].",
                                                 [(i + 1, u, "page") for i, u in enumerate(observed_urls)], [])),
        "pasted_observations_cited": (text, renumbered(f"# {QUESTION}\n\n" + re.sub(
            r"(?<=[.!?])(?=\s|$)", " [1]", pasted) + "\n\n## Conclusion\nSee the pages above [1].",
            [(i + 1, u, "page") for i, u in enumerate(observed_urls)], [])),
        "off_topic_section": (jazz_text, renumbered(
            body.rstrip() + "\n\n## Jazz\n" + " ".join(f"{s.rstrip('.')} [{n + 1}]." for s in jazz_sentences),
            refs, [(UNRELATED, "Jazz")])),
    }
    # Repeated tool calls: every search of the trajectory asked twice more (the report unchanged).
    repeated = re.sub(r"(<web_search>.*?</web_search>\s*<observation>.*?</observation>)", r"\1\1\1", text,
                      flags=re.DOTALL)
    out["repeated_tool_calls"] = (repeated, report)
    return out


STRICT = {"padding_cited", "invented_urls", "pasted_observations", "pasted_observations_cited",
          "off_topic_section"}


def test_the_heuristic_judge_and_the_funnel_judge_are_not_raised_by_hacks(case):
    text, report, jazz, cache = case
    from synth.tools import Tools

    async def run():
        tools = Tools.from_config({"cache_dir": str(cache), "search": {"backend": "local"},
                                   "crawl": {"backend": "local"}})
        judge = HeuristicJudge(tools)
        try:
            honest = await judge.score(QUESTION, report, trajectory=text)
            honest_funnel = await score_candidate(judge, QUESTION, report, text)
            out = {}
            for name, (t, r) in hacks(text, report, jazz).items():
                out[name] = (await judge.score(QUESTION, r, trajectory=t), await score_candidate(judge, QUESTION, r, t))
            return honest, honest_funnel, out
        finally:
            await tools.aclose()

    honest, honest_funnel, scored = asyncio.run(run())
    assert honest.overall > 0.8 and honest.details["on_topic"] == 1.0
    for name, (verdict, funnel) in scored.items():
        assert verdict.overall <= honest.overall, (name, verdict.overall, verdict.details)
        assert funnel.overall <= honest_funnel.overall, (name, funnel.overall)
        if name in STRICT:
            assert verdict.overall < honest.overall, (name, verdict.overall, honest.overall)
    assert scored["repeated_tool_calls"][1].overall < honest_funnel.overall   # the funnel reads tool use
    assert scored["off_topic_section"][0].details["on_topic"] < 1.0
    assert scored["pasted_observations"][0].details["copied"] > 0.5
    assert scored["invented_urls"][0].details["supported_citations"] == honest.details["supported_citations"]


def test_the_composite_reward_is_not_raised_by_hacks(case):
    from experiments.eval.embedded import InProcessTools
    text, report, jazz, cache = case
    served = InProcessTools(cache)   # /v1/judge on loopback: the synth service's contract
    try:
        cases = {"honest": (text, report), **hacks(text, report, jazz)}
        names = list(cases)
        got = asyncio.run(rewards.score_all(served.url, [QUESTION] * len(names),
                                            [with_report(t, r) for t, r in cases.values()], rewards.RewardConfig()))
    finally:
        served.terminate()
        served.wait(timeout=30)
    by_name = dict(zip(names, got))
    honest = by_name["honest"]
    assert not honest.abstained and honest.format == 1.0
    for name, reward in by_name.items():
        assert not reward.abstained, (name, reward.reason)
        assert reward.total <= honest.total, (name, reward)
        assert reward.format <= honest.format, name
        if name in STRICT:
            assert reward.total < honest.total, name
    # N counts distinct calls: asking each search three times pays no more tool reward. (The off-topic hack's
    # extra crawl is one more distinct call: R_tool may pay it, the total still falls.)
    assert by_name["repeated_tool_calls"].tool == honest.tool


def test_an_observed_source_supports_even_when_its_url_ends_in_a_parenthesis(tmp_path):
    """Only invented sources lose their support: a crawled page whose address ends in ")" is observed."""
    from synth.tools import Tools

    async def run():
        tools = Tools.from_config({"cache_dir": str(tmp_path), "search": {"backend": "local"},
                                   "crawl": {"backend": "local"}})
        try:
            crawled = await tools.crawl_page(["https://en.wikipedia.org/wiki/Western_Front_(World_War_I)"], "war")
            page = crawled.pages[0]
            claim = page.text.split(". ")[0]
            trajectory = f"<crawl_page>url={page.url}</crawl_page>" + protocol.observation(crawled.observation)
            report = f"# War\n\nIntro.\n\n## The front\n{claim} [1].\n\n## References\n[1]. {page.url} - Front"
            observed = await HeuristicJudge(tools).score("What was the Western Front?", report, trajectory=trajectory)
            unobserved = await HeuristicJudge(tools).score("What was the Western Front?", report,
                                                           trajectory=trajectory.replace(page.url, "https://a.org/x"))
            return observed, unobserved
        finally:
            await tools.aclose()

    observed, unobserved = asyncio.run(run())
    assert observed.details["citation_support"] == 1.0
    assert unobserved.details["citation_support"] == 0.0 and unobserved.overall < observed.overall

"""Report judges: the deterministic heuristic rubric (real corpus pages through Tools) and the LLM rubric judge
against a scripted OpenAI-compatible server over real HTTP."""
import asyncio
import json

import pytest
from scripted_openai import Faults, ScriptedOpenAI

from oresearcher import protocol
from synth import text as text_lib
from synth.judge import DIMENSIONS, HeuristicJudge, LLMJudge, parse_rubric
from synth.llm import Endpoint, LLMClient
from synth.tools import Tools

QUESTION = "How do plants use photosynthesis and chlorophyll to capture light energy?"
PHOTOSYNTHESIS = "https://en.wikipedia.org/wiki/Photosynthesis"
CHLOROPHYLL = "https://en.wikipedia.org/wiki/Chlorophyll"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("judge-cache")


def _gather(cache_dir):
    """A small real trajectory: search and crawl through the embedded tools; returns (trajectory, pages)."""
    async def main():
        tools = Tools.from_config({"cache_dir": str(cache_dir)})
        search = await tools.web_search(["photosynthesis chlorophyll light"], num=5)
        crawl = await tools.crawl_page([PHOTOSYNTHESIS, CHLOROPHYLL], goal="capture light energy")
        await tools.aclose()
        trajectory = ("<subtask_list>\n- light capture\n</subtask_list>\n<subtask>light capture</subtask>\n"
                      "<think>look it up</think>\n<web_search>query=photosynthesis chlorophyll light</web_search>"
                      + protocol.observation(search.observation)
                      + f"<crawl_page>url={PHOTOSYNTHESIS} | {CHLOROPHYLL}</crawl_page>"
                      + protocol.observation(crawl.observation))
        return trajectory, {p.url: p for p in crawl.pages}

    return asyncio.run(main())


def _report(pages, swap_sentence=None):
    """A well-formed report whose cited sentences are copied from the cited pages."""
    s1 = text_lib.sentences(pages[PHOTOSYNTHESIS].text)
    s2 = text_lib.sentences(pages[CHLOROPHYLL].text)
    pigment_claim = swap_sentence or s2[0]
    return (f"Plants capture light energy through photosynthesis, using pigments such as chlorophyll.\n\n"
            f"## Photosynthesis\n{s1[0]} [1] {s1[1]} [1]\n\n"
            f"## Pigments\n{pigment_claim} [2] {s2[1]} [2]\n\n"
            f"## Conclusion\nIn summary, photosynthesis and chlorophyll together turn sunlight into chemical energy.\n\n"
            f"## References\n[1]. {PHOTOSYNTHESIS} - Photosynthesis\n[2]. {CHLOROPHYLL} - Chlorophyll\n")


def _score(judge_factory, cache_dir, *args, **kwargs):
    async def main():
        tools = Tools.from_config({"cache_dir": str(cache_dir)})
        try:
            return await judge_factory(tools).score(*args, **kwargs)
        finally:
            await tools.aclose()

    return asyncio.run(main())


def test_heuristic_scores_are_deterministic_and_in_range(cache_dir):
    trajectory, pages = _gather(cache_dir)
    report = _report(pages)
    first = _score(HeuristicJudge, cache_dir, QUESTION, report, trajectory=trajectory)
    second = _score(HeuristicJudge, cache_dir, QUESTION, report, trajectory={"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": trajectory}]})
    assert first.to_json() == second.to_json()
    assert not first.abstained and first.judge == "heuristic"
    assert set(first.scores) == set(DIMENSIONS) and all(0 <= v <= 1 for v in first.scores.values())
    assert 0 < first.overall <= 1
    assert first.details["structure_checks"] == {"introduction": True, "body": True, "conclusion": True,
                                                 "references": True, "consistency": True}
    assert first.details["citations"] == 4 and first.details["supported_citations"] == 4
    assert first.details["citation_support"] == 1.0
    payload = first.to_json()
    assert json.loads(json.dumps(payload)) == payload and payload["abstained"] is False


def test_unsupported_citation_scores_lower(cache_dir):
    trajectory, pages = _gather(cache_dir)
    good = _score(HeuristicJudge, cache_dir, QUESTION, _report(pages), trajectory=trajectory)
    invented = "The Eiffel Tower was completed in 1889 for the World Fair in Paris."
    bad = _score(HeuristicJudge, cache_dir, QUESTION, _report(pages, swap_sentence=invented), trajectory=trajectory)
    assert bad.overall < good.overall
    assert bad.details["citation_support"] < good.details["citation_support"]
    assert [u["sentence"] for u in bad.details["unsupported"]] == [invented[:-1] + " [2]."]


def test_evidence_coverage_counts_gathered_pages(cache_dir):
    trajectory, pages = _gather(cache_dir)
    report = _report(pages)
    with_evidence = _score(HeuristicJudge, cache_dir, QUESTION, report, trajectory=trajectory)
    # The same report after a trajectory that gathered other pages: the citations are not its evidence.
    other = trajectory.replace(PHOTOSYNTHESIS, "https://en.wikipedia.org/wiki/Mars").replace(
        CHLOROPHYLL, "https://en.wikipedia.org/wiki/Jupiter")
    without = _score(HeuristicJudge, cache_dir, QUESTION, report, trajectory=other)
    assert with_evidence.details["evidence_coverage"] > without.details["evidence_coverage"]
    assert with_evidence.scores["comprehensiveness"] > without.scores["comprehensiveness"]


def test_language_mismatch_and_missing_structure_lower_the_score(cache_dir):
    trajectory, pages = _gather(cache_dir)
    report = _report(pages)
    english = _score(HeuristicJudge, cache_dir, QUESTION, report, trajectory=trajectory)
    chinese = _score(HeuristicJudge, cache_dir, "植物如何利用光合作用和叶绿素捕获光能？", report, trajectory=trajectory)
    assert chinese.details["language_match"] == 0.0 and chinese.overall < english.overall / 2 + 1e-9
    bare = report.split("## Conclusion")[0]
    unstructured = _score(HeuristicJudge, cache_dir, QUESTION, bare, trajectory=trajectory)
    assert unstructured.scores["readability"] < english.scores["readability"]
    empty = _score(HeuristicJudge, cache_dir, QUESTION, "   ")
    assert empty.abstained and empty.overall is None and "empty" in empty.reason


def _llm_judge_run(responder, *args, faults=None, **kwargs):
    with ScriptedOpenAI(responder, faults=faults, model="judge-model") as server:
        async def main():
            llm = LLMClient([Endpoint(server.base_url, "judge-model")], timeout=5, max_retries=2, backoff=0.001)
            try:
                return await LLMJudge(llm).score(*args, **kwargs)
            finally:
                await llm.aclose()

        return asyncio.run(main())


def test_llm_judge_scores_and_reference_relative_score():
    def rubric(request):
        report = request["messages"][-1]["content"]
        value = 4 if "REFERENCE" in report else 8
        return "```json\n" + json.dumps({d: value for d in DIMENSIONS} | {"justification": "ok"}) + "\n```"

    absolute = _llm_judge_run(rubric, QUESTION, "my report")
    assert not absolute.abstained and absolute.judge == "llm:judge-model"
    assert absolute.scores == {d: 0.8 for d in DIMENSIONS} and absolute.overall == pytest.approx(0.8)
    relative = _llm_judge_run(rubric, QUESTION, "my report", reference="REFERENCE report")
    assert relative.scores == {d: pytest.approx(8 / 12) for d in DIMENSIONS}
    assert relative.overall == pytest.approx(8 / 12)


def test_llm_judge_abstains_on_garbage_and_on_failure():
    garbage = _llm_judge_run(lambda r: "I think this report is quite good, maybe a 7.", QUESTION, "report")
    assert garbage.abstained and garbage.overall is None and garbage.scores == {}
    assert "no JSON object" in garbage.reason
    assert garbage.to_json() == {"abstained": True, "reason": garbage.reason, "judge": "llm:judge-model"}
    out_of_range = _llm_judge_run(lambda r: json.dumps({d: 42 for d in DIMENSIONS}), QUESTION, "report")
    assert out_of_range.abstained and "outside 0-10" in out_of_range.reason
    failing = _llm_judge_run(None, QUESTION, "report", faults=Faults(error_500=1.0))
    assert failing.abstained and "HTTP 500" in failing.reason


def test_parse_rubric_reasons():
    assert parse_rubric('{"comprehensiveness": 5, "insight": "6", "instruction_following": 7, "readability": 8}') \
        == {"comprehensiveness": 5.0, "insight": 6.0, "instruction_following": 7.0, "readability": 8.0}
    assert "lacks a numeric 'insight'" in parse_rubric('{"comprehensiveness": 5}'.replace("5", "5, \"insight\": null"))
    assert "invalid JSON" in parse_rubric("{comprehensiveness: 5}")

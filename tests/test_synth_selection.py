"""The funnel's judge reads the trajectory: the paper's criteria (coherence, tool use, evidence grounding) with
the report's, a minimum score, regeneration rounds, and all-abstain rejections. The embedded teacher writes the
candidates; the LLM judge is a scripted server on loopback."""
import hashlib
import json
import re

import pytest
from scripted_openai import ScriptedOpenAI
from test_synth_workflow import check_record, embedded, synthesize_once

from synth.judge import DIMENSIONS
from synth.selection import CRITERIA, TRAJECTORY_PROMPT, abridge, trajectory_criteria

QUESTION = "How does photosynthesis affect the global carbon cycle?"


def trajectory_of(request: dict) -> str:
    return re.search(r"Trajectory:\n(.*)\n\nReport:\n", request["messages"][-1]["content"], re.DOTALL).group(1)


def llm_judged(tmp_path, server, **workflow):
    return embedded(tmp_path, **{"judge.kind": "llm", "judge.timeout": 5.0, "judge.max_retries": 1,
                                 "judge.endpoints": [{"base_url": server.base_url, "model": "judge"}],
                                 **{f"workflow.{k}": v for k, v in workflow.items()}})


def test_llm_judge_chooses_by_the_trajectory_criteria(tmp_path):
    given = {}   # abridged trajectory -> the trajectory score the judge gave it

    def judge(request):
        assert request["messages"][0]["content"] == TRAJECTORY_PROMPT
        trajectory = trajectory_of(request)
        assert "<think>" in trajectory and "<observation>" in trajectory and "<crawl_page>" in trajectory
        # Identical report scores; trajectory scores differ per candidate (a digest of its trajectory).
        score = int(hashlib.sha256(trajectory.encode()).hexdigest(), 16) % 11
        given[trajectory] = score
        return json.dumps({**{d: 6 for d in DIMENSIONS}, **{c: score for c in CRITERIA}, "justification": "-"})

    with ScriptedOpenAI(judge) as server:
        outcome = synthesize_once(llm_judged(tmp_path, server, candidates=3), QUESTION)
    assert outcome.record is not None, outcome.rejections
    check_record(outcome.record)
    assert len(given) == 3, "each candidate's trajectory was judged"
    chosen = given[abridge(outcome.record["messages"][2]["content"])]
    assert chosen == max(given.values())
    verdict = outcome.record["meta"]["judge"]
    assert verdict["scores"]["coherence"] == chosen / 10
    assert verdict["overall"] == pytest.approx((0.6 + chosen / 10) / 2, abs=1e-4)   # recorded to 4 decimals
    assert outcome.record["meta"]["rounds"] == 1 and outcome.record["meta"]["selection"] == "trajectory"


def test_below_the_minimum_score_regenerates_and_then_keeps(tmp_path):
    def judge(request):
        value = 2 if judge.calls == 0 else 9   # the first round's only candidate is poor
        judge.calls += 1
        return json.dumps({k: value for k in DIMENSIONS + CRITERIA})
    judge.calls = 0

    with ScriptedOpenAI(judge) as server:
        outcome = synthesize_once(llm_judged(tmp_path, server, candidates=1, min_score=0.5, regenerate=2), QUESTION)
    assert outcome.record is not None, outcome.rejections
    assert outcome.record["meta"]["rounds"] == 2 and outcome.record["meta"]["candidate"] == 1
    assert outcome.record["meta"]["judge"]["overall"] == 0.9
    assert outcome.rejections == ["candidate 0: below_min_score: judge overall 0.200 < 0.5",
                                  "round 1: no candidate kept; regenerating"]


def test_every_judge_abstaining_rejects_with_that_reason(tmp_path):
    with ScriptedOpenAI(["This looks fine to me."]) as server:
        outcome = synthesize_once(llm_judged(tmp_path, server, candidates=2, regenerate=1), QUESTION)
        judged = len(server.requests)
    assert outcome.record is None
    assert judged == 4   # two rounds of two candidates
    assert sum(r.startswith("all_abstained") for r in outcome.rejections) == 2
    assert sum("judge_abstained: no JSON object" in r for r in outcome.rejections) == 4


def test_heuristic_trajectory_criteria_prefer_reasoned_non_repeating_reads():
    obs = "<observation>1. [Coral](https://a.example/coral) reefs</observation>"
    good = ("<subtask>reefs</subtask><think>search first</think><web_search>query=coral</web_search>" + obs +
            "<think>read the hit</think><crawl_page>url=https://a.example/coral</crawl_page><observation>x"
            "</observation><subtask_answer>done [1]</subtask_answer>")
    bad = ("<subtask>reefs</subtask><web_search>query=coral</web_search>" + obs +
           "<web_search>query=coral</web_search>" + obs + "<crawl_page>url=https://b.example/elsewhere</crawl_page>"
           "<observation>x</observation>")
    assert trajectory_criteria(good, 0.8) == {"coherence": 1.0, "tool_use": 1.0, "grounding": 0.8}
    poor = trajectory_criteria(bad, 0.8)
    assert poor["coherence"] == 0.0 and poor["tool_use"] == (0 + 2 / 3) / 2


def test_embedded_funnel_scores_the_trajectory_offline(tmp_path):
    outcome = synthesize_once(embedded(tmp_path, **{"workflow.candidates": 1}), QUESTION)
    verdict = outcome.record["meta"]["judge"]
    assert verdict["judge"] == "heuristic" and set(verdict["scores"]) == set(DIMENSIONS + CRITERIA)
    assert all(0 <= v <= 1 for v in verdict["scores"].values())
    assert verdict["scores"]["coherence"] > 0.5 and verdict["scores"]["tool_use"] > 0.5

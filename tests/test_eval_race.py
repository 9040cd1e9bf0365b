"""RACE: criteria parsing, the weighted arithmetic, and (over real HTTP) the scripted-judge run."""
from pathlib import Path

import pytest

from experiments.eval import race
from experiments.eval.judge import JudgeError, extract_json

FIX = Path(__file__).parent / "fixtures" / "eval"

# Task 1 judge scores (target, reference), per criterion, in criteria order.
PAIRS_1 = {"comprehensiveness": [(8, 6), (5, 10)], "insight": [(9, 3)],
           "instruction_following": [(4, 8), (6, 8)], "readability": [(7, 7)]}


def criteria(task_id: int) -> race.TaskCriteria:
    rows = race.read_jsonl(FIX / "criteria.jsonl")
    return race.parse_criteria(next(r for r in rows if r["id"] == task_id), f"task {task_id}")


def test_weighted_scores_by_hand():
    # comprehensiveness: t = .6*8 + .4*5 = 6.8, r = .6*6 + .4*10 = 7.6; insight 9 vs 3;
    # instruction following: t = .5*4 + .5*6 = 5, r = 8; readability 7 vs 7.
    # T = .4*6.8 + .3*9 + .2*5 + .1*7 = 7.12; R = .4*7.6 + .3*3 + .2*8 + .1*7 = 6.24; score = 7.12/13.36.
    out = race.weighted_scores(PAIRS_1, criteria(1))
    assert out["target_total"] == pytest.approx(7.12) and out["reference_total"] == pytest.approx(6.24)
    assert out["score"] == pytest.approx(0.5329341)
    assert out["dims"]["comprehensiveness"]["score"] == pytest.approx(6.8 / 14.4)
    assert out["dims"]["insight"]["score"] == pytest.approx(0.75)
    assert out["dims"]["instruction_following"]["score"] == pytest.approx(5 / 13)
    assert out["dims"]["readability"]["score"] == pytest.approx(0.5)


def test_zero_totals_give_no_score():
    zeros = {d: [(0, 0)] * len(v) for d, v in PAIRS_1.items()}
    assert race.weighted_scores(zeros, criteria(1))["score"] is None


def judge_answer(pairs):
    return {d: [{"criterion": f"c{k}", "article_1_score": t, "article_2_score": r}
                for k, (t, r) in enumerate(v)] for d, v in pairs.items()}


def test_parse_scores_rejects_bad_answers():
    c = criteria(1)
    assert race.parse_scores(judge_answer(PAIRS_1), c)["insight"] == [(9.0, 3.0)]
    bad_count = judge_answer(PAIRS_1) | {"insight": []}
    with pytest.raises(JudgeError, match="0 entries for 1 criteria"):
        race.parse_scores(bad_count, c)
    out_of_range = judge_answer(PAIRS_1 | {"readability": [(11, 7)]})
    with pytest.raises(JudgeError, match="outside 0..10"):
        race.parse_scores(out_of_range, c)
    with pytest.raises(JudgeError, match="missing"):
        race.parse_scores({"insight": []}, c)


def test_criteria_errors_name_the_field():
    with pytest.raises(ValueError, match=r"task 9: criterions\['comprehensiveness'\] must be a non-empty list"):
        race.parse_criteria({"dimension_weight": {"comprehensiveness": 1}, "criterions": {}}, "task 9")
    with pytest.raises(ValueError, match=r"task 9: dimension_weight\['comprehensiveness'\] missing"):
        race.parse_criteria({"dimension_weight": {}, "criterions": {}}, "task 9")


def test_extract_json_from_fenced_and_chatty_answers():
    assert extract_json('Sure!\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here: [{"idx": 1}] hope it helps') == [{"idx": 1}]
    with pytest.raises(JudgeError):
        extract_json("I cannot do that.")


# ------------------------------------------------------------------------------ scripted judge, real HTTP
# Task 3 scores: comprehensiveness (6, 4), insight (5, 5), instruction following (8, 2), readability (3, 7);
# weights .3/.3/.2/.2: T = 1.8 + 1.5 + 1.6 + .6 = 5.5, R = 1.2 + 1.5 + .4 + 1.4 = 4.5, score = 0.55.
PAIRS_3 = {"comprehensiveness": [(6, 4)], "insight": [(5, 5)], "instruction_following": [(8, 2)],
           "readability": [(3, 7)]}


def scripted_judge():
    """Task 1: a valid answer in a markdown fence. Task 2: never JSON (dropped after every attempt).
    Task 3: first a score of 11 (rejected), then a valid answer."""
    import json

    seen = {"TARGET-3": 0}

    def respond(request):
        prompt = request["messages"][-1]["content"]
        if "TARGET-1" in prompt:
            return "Here is my evaluation:\n```json\n" + json.dumps(judge_answer(PAIRS_1)) + "\n```"
        if "TARGET-2" in prompt:
            return "I would rate the first article as quite good overall."
        seen["TARGET-3"] += 1
        if seen["TARGET-3"] == 1:
            return json.dumps(judge_answer(PAIRS_3 | {"insight": [(11, 5)]}))
        return json.dumps(judge_answer(PAIRS_3))
    return respond


def test_race_over_http_matches_hand_computed_scores_and_drops_judge_failures():
    import asyncio

    from scripted_openai import Faults, ScriptedOpenAI

    from experiments.eval.judge import Judge

    tasks, targets = race.read_jsonl(FIX / "tasks.jsonl"), race.read_jsonl(FIX / "targets.jsonl")
    refs, crit = race.read_jsonl(FIX / "references.jsonl"), race.read_jsonl(FIX / "criteria.jsonl")
    # 20% of requests fail with 500/429 before the script answers: the client retries them, scores unchanged.
    with ScriptedOpenAI(scripted_judge(), faults=Faults(error_500=0.1, error_429=0.1, seed=3)) as server:
        judge = Judge.from_endpoint(server.base_url, "scripted-judge", max_attempts=3, backoff=0.01)
        report = asyncio.run(race.run_race(tasks, targets, refs, judge, crit, concurrency=3))
        assert server.stats["error_500"] + server.stats["error_429"] > 0
    scored = {t["id"]: t for t in report.tasks}
    assert sorted(scored) == [1, 3]
    assert scored[1]["score"] == pytest.approx(7.12 / 13.36)
    assert scored[3]["score"] == pytest.approx(0.55)
    assert [(d["id"], d["kind"]) for d in report.dropped] == [(2, "judge")]
    assert "judge failed 3 time(s)" in report.dropped[0]["reason"]
    s = report.summary
    assert (s["scored"], s["dropped"], s["judge_failures"]) == (2, 1, 1)
    assert s["overall"] == pytest.approx(100 * (7.12 / 13.36 + 0.55) / 2)
    assert s["comprehensiveness"] == pytest.approx(100 * (6.8 / 14.4 + 0.6) / 2)
    assert s["insight"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert s["instruction_following"] == pytest.approx(100 * (5 / 13 + 0.8) / 2)
    assert s["readability"] == pytest.approx(100 * (0.5 + 0.3) / 2)
    assert judge.stats.failures == 1 and judge.stats.rejected == 3 + 1


def test_race_with_judge_written_criteria_and_a_missing_reference():
    import asyncio
    import json

    from scripted_openai import ScriptedOpenAI

    from experiments.eval.judge import Judge

    rubric = {"dimension_weight": {"comprehensiveness": 0.5, "insight": 0.5, "instruction_following": 0,
                                   "readability": 0},
              "criterions": {d: [{"criterion": "a", "explanation": "", "weight": 1},
                                 {"criterion": "b", "explanation": "", "weight": 3}] for d in race.DIMENSIONS}}
    # comprehensiveness: t = (1*10 + 3*2)/4 = 4, r = (1*0 + 3*4)/4 = 3; insight: t = 2, r = 6 (weights 1, 3
    # on (2, 6), (2, 6)); the other two dimensions weigh 0. T = .5*4 + .5*2 = 3, R = .5*3 + .5*6 = 4.5.
    scores = {"comprehensiveness": [(10, 0), (2, 4)], "insight": [(2, 6), (2, 6)],
              "instruction_following": [(5, 5), (5, 5)], "readability": [(5, 5), (5, 5)]}

    def respond(request):
        prompt = request["messages"][-1]["content"]
        return json.dumps(rubric if "grading rubric" in prompt else judge_answer(scores))

    tasks = race.read_jsonl(FIX / "tasks.jsonl")[:2]
    targets = race.read_jsonl(FIX / "targets.jsonl")
    refs = race.read_jsonl(FIX / "references.jsonl")[:1]          # task 2 has no reference report
    with ScriptedOpenAI(respond) as server:
        judge = Judge.from_endpoint(server.base_url, "scripted-judge", backoff=0.01)
        report = asyncio.run(race.run_race(tasks, targets, refs, judge, None))
    assert [t["id"] for t in report.tasks] == [1]
    assert report.tasks[0]["score"] == pytest.approx(3 / 7.5)
    assert report.tasks[0]["dims"]["instruction_following"]["score"] == pytest.approx(0.5)
    assert report.dropped == [{"id": 2, "kind": "input", "reason": "no reference article"}]
    assert report.summary["judge_failures"] == 0


def test_race_cli_writes_the_report(tmp_path, capsys):
    import json

    from scripted_openai import ScriptedOpenAI

    out = tmp_path / "race.json"
    with ScriptedOpenAI(scripted_judge()) as server:
        rc = race.main(["--tasks", str(FIX / "tasks.jsonl"), "--targets", str(FIX / "targets.jsonl"),
                        "--references", str(FIX / "references.jsonl"), "--criteria", str(FIX / "criteria.jsonl"),
                        "--judge-url", server.base_url, "--judge-model", "scripted", "--concurrency", "1",
                        "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["summary"]["overall"] == pytest.approx(100 * (7.12 / 13.36 + 0.55) / 2)
    printed = capsys.readouterr().out
    assert "scored 2, dropped 1 (1 judge failures" in printed and "54.15" in printed

"""Scoring of the embedded evaluation: the judge and KPR wiring over the in-process tool/judge endpoints."""
import json

import pytest

from experiments.eval import embedded


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = embedded.InProcessTools(tmp_path_factory.mktemp("cache"))
    yield svc
    svc.terminate()
    svc.wait(10)


def questions():
    rows = [json.loads(line) for line in embedded.QUESTIONS.read_text(encoding="utf-8").splitlines()]
    return rows[:2]


def test_score_system_reports_judge_and_kpr(service):
    qs = questions()
    first = qs[0]
    # A report copying the first question's key points and citing their pages, and no answer to the second.
    body = " ".join(f"{kp['text'][:-1]} [1]." for kp in first["key_points"])
    url = first["pages"][0]["url"]
    report = f"# Answer\n\nIntroduction.\n\n{body}\n\nIn conclusion, see above.\n\n## References\n[1]. {url} - Page"
    texts = {first["id"]: f"<suggested_answer>{report}</suggested_answer>", qs[1]["id"]: "<think>no answer</think>"}
    out = embedded.score_system(service.url, qs, texts)
    row, per_q = out["row"], {r["id"]: r for r in out["per_question"]}
    assert row["questions"] == 2 and row["reports"] == 1 and row["judge_abstained"] == 0
    assert per_q[first["id"]]["kpr"] == 1.0 and per_q[first["id"]]["kpc"] == 0.0
    assert row["kpr"] == pytest.approx(50.0)
    judged = per_q[first["id"]]["judge"]
    assert judged["judge"] == "heuristic" and 0 < judged["overall"] <= 1
    # no report: scored 0 as the system's failure, not dropped as a judge failure
    assert per_q[qs[1]["id"]]["judge"]["overall"] == 0.0
    assert row["judge"] == pytest.approx(100 * judged["overall"] / 2)


def test_table_says_why_a_row_could_not_run():
    text = embedded.format_table([{"system": "sft", "status": "no checkpoint given (--sft DIR)"},
                                  {"system": "base", "status": "ok", "judge": 12.345, "kpr": 0.0, "reports": 3,
                                   "seconds": 10.0}])
    assert "sft" in text and "could not run: no checkpoint given (--sft DIR)" in text
    assert "12.3" in text and "n/a" in text


def test_teacher_row_runs_synth_workflow_in_process(tmp_path, service):
    from pathlib import Path

    from oresearcher import protocol

    config = str(Path(__file__).resolve().parents[1] / "configs" / "synth.py") + ":embedded"
    qs = questions()[:1]
    texts = embedded.teacher_texts(qs, synth_config=config, cache_dir=tmp_path, step_budget=3)
    text = texts[qs[0]["id"]]
    assert text.startswith("<subtask_list>") and protocol.extract_report(text)
    row = embedded.score_system(service.url, qs, texts)["row"]
    assert row["reports"] == 1 and row["kpr"] > 0 and row["tool_calls"] >= 3

"""`python -m synth questions`: research questions from the corpus or an LLM, none leaking into an evaluation
set (same articles or half the words of an evaluation question), none repeated."""
import json

from scripted_openai import ScriptedOpenAI

from synth.__main__ import main
from synth.questions import KINDS, evaluation_sets

EVAL = "experiments/data/embedded_eval.jsonl"


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corpus_questions_are_distinct_of_every_kind_and_outside_the_evaluation_sets(tmp_path):
    out = tmp_path / "q.jsonl"
    assert main(["questions", "--n", "30", "--out", str(out)]) == 0
    rows = read(out)
    assert len(rows) == 30 and len({r["question"] for r in rows}) == 30
    assert {r["kind"] for r in rows} == set(KINDS) and [r["id"] for r in rows][:2] == ["gen-000001", "gen-000002"]
    evaluation = [json.loads(line) for line in open(EVAL)]
    eval_urls = {k["url"] for r in evaluation for k in r["key_points"]}
    assert not [r for r in rows if set(r["pages"]) & eval_urls]
    exclusions = evaluation_sets()
    assert not [r for r in rows if exclusions.leaks(r["question"])]

    # A further evaluation set given with --exclude keeps its questions out of the same run.
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"id": "h", "prompt": rows[0]["question"]}) + "\n")
    again = tmp_path / "again.jsonl"
    assert main(["questions", "--n", "30", "--out", str(again), "--exclude", str(held_out)]) == 0
    assert rows[0]["question"] not in {r["question"] for r in read(again)}


def test_llm_questions_drop_evaluation_questions_and_repeats(tmp_path):
    evaluation_question = json.loads(open(EVAL).readline())["prompt"]
    answer = "\n".join(["1. How did the printing press change literacy in early modern Europe?",
                        "2. How did the printing press change literacy in early modern Europe?",
                        f"- {evaluation_question}",
                        "Sure, here are the questions:",
                        "3. What links monsoon failures to famines in colonial India?"])
    with ScriptedOpenAI([answer]) as server:
        out = tmp_path / "llm.jsonl"
        rc = main(["questions", "--n", "2", "--out", str(out), "--source", "llm",
                   f"--config.teacher.endpoints=[{{'base_url': '{server.base_url}', 'model': 'writer'}}]"])
    assert rc == 0
    assert [r["question"] for r in read(out)] == [
        "How did the printing press change literacy in early modern Europe?",
        "What links monsoon failures to famines in colonial India?"]


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["questions", "--n", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--n 0" in capsys.readouterr().err
    assert main(["questions", "--n", "1", "--out", str(tmp_path / "x"), "--exclude", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["questions", "--n", "1", "--out", str(tmp_path / "x"), "--source", "llm"]) == 2
    assert "teacher endpoints" in capsys.readouterr().err

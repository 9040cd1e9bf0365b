"""Several teachers: teacher.roles hands each role to its list of models in turn (round-robin per candidate and
sub-question), and every record's lineage says who played what. Two scripted OpenAI servers on loopback."""
from scripted_openai import ScriptedOpenAI
from test_synth_workflow import check_record, openai_config, scripted_teacher, synthesize_once


def test_researchers_alternate_between_teachers_and_the_lineage_records_them(tmp_path):
    with ScriptedOpenAI(scripted_teacher) as a, ScriptedOpenAI(scripted_teacher) as b:
        cfg = openai_config(tmp_path, a.base_url, **{
            "workflow.candidates": 1,
            "teacher.roles.researcher": [{"base_url": a.base_url, "model": "model-a"},
                                         {"base_url": b.base_url, "model": "model-b"}],
            "teacher.roles.summarizer": [{"base_url": b.base_url, "model": "model-b"}]})
        outcome = synthesize_once(cfg, "How does photosynthesis affect the carbon cycle?")
        models_a = {r["model"] for r in a.requests}
        models_b = {r["model"] for r in b.requests}
    assert outcome.record is not None, outcome.rejections
    check_record(outcome.record)
    lineage = outcome.record["meta"]["lineage"]
    n = outcome.record["meta"]["subtasks"]
    assert lineage["planner"] == "openai:scripted"          # no planner list: the main teacher plans
    assert lineage["researchers"] == ["openai:model-a" if i % 2 == 0 else "openai:model-b" for i in range(n)]
    assert lineage["summarizer"] == "openai:model-b"
    assert outcome.record["meta"]["teachers"] == ["openai:scripted", "openai:model-a", "openai:model-b"]
    assert models_a == {"scripted", "model-a"} and models_b == {"model-b"}


def test_embedded_records_name_the_single_teacher_in_their_lineage(tmp_path):
    from test_synth_workflow import embedded

    outcome = synthesize_once(embedded(tmp_path, **{"workflow.candidates": 1}), "What caused the fall of Rome?")
    lineage = outcome.record["meta"]["lineage"]
    assert lineage["planner"] == lineage["summarizer"] == "extractive"
    assert set(lineage["researchers"]) == {"extractive"} and outcome.record["meta"]["teachers"] == ["extractive"]

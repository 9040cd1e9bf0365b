"""Reasoning-model endpoints (HTTP 400 on max_tokens, stop, top_p and temperature != 1; reasoning_content in
answers) through the shared LLM client: directly, through run_agent, the synth teacher and the LLM judge.
Real HTTP on loopback (tests/scripted_openai.py's reasoning mode)."""
import asyncio
import json

import pytest
from scripted_openai import REASONING, ScriptedOpenAI

from synth.llm import Accounting, Endpoint, LLMClient, LLMError, _refused_param

STOP = ["</web_search>", "</crawl_page>"]


def _chat_twice(server, endpoint_kwargs=None, **chat_kwargs):
    async def main():
        client = LLMClient([Endpoint(server.base_url, "o-model", price_completion=1e6, **(endpoint_kwargs or {}))],
                           timeout=5, max_retries=2, backoff=0.001)
        accounting = Accounting()
        try:
            results = [await client.chat([{"role": "user", "content": "go"}], accounting=accounting, **chat_kwargs)
                       for _ in range(2)]
        finally:
            await client.aclose()
        return results, accounting
    return asyncio.run(main())


def test_refused_parameters_are_learned_once_and_stop_is_applied_by_the_client():
    answer = "<think>search</think><web_search>query=coral</web_search> text after the stop"
    with ScriptedOpenAI([answer], reasoning=True) as server:
        results, accounting = _chat_twice(server, temperature=0.3, top_p=0.9, max_tokens=64, stop=STOP, seed=5)
        requests = server.requests
        stats = dict(server.stats)
    # The first call met one 400 per refused field, each naming it; the second call was accepted at once.
    assert stats == {"refused_max_tokens": 1, "refused_stop": 1, "refused_top_p": 1, "refused_temperature": 1,
                     "ok": 2}, stats
    assert len(requests) == 6
    for accepted in (requests[4], requests[5]):
        assert accepted["max_completion_tokens"] == 64 and accepted["seed"] == 5
        assert not {"max_tokens", "stop", "top_p", "temperature"} & set(accepted)
    for result in results:
        assert result.text == "<think>search</think><web_search>query=coral"   # cut before the stop string
        assert result.finish_reason == "stop" and result.retries == 0
        assert result.reasoning == REASONING
    thought = len(REASONING.split())
    assert results[0].usage.reasoning_tokens == thought
    assert accounting.calls == 2 and accounting.retries == 0 and accounting.failures == 0
    assert accounting.adaptations == 4 and accounting.reasoning_tokens == 2 * thought
    # Reasoning is billed as completion: 1 currency unit per completion token here.
    assert accounting.cost == pytest.approx(accounting.completion_tokens)
    assert accounting.completion_tokens == 2 * (thought + len(answer.split()))   # the server counted it all


def test_refusals_declared_in_the_config_cost_no_400():
    with ScriptedOpenAI(["ok"], reasoning=True) as server:
        results, _ = _chat_twice(server, {"token_param": "max_completion_tokens",
                                          "drop_params": ["stop", "top_p", "temperature"]}, stop=STOP, top_p=0.5)
        assert dict(server.stats) == {"ok": 2}
    assert [r.text for r in results] == ["ok", "ok"]


def test_a_400_for_another_reason_is_not_retried_and_bad_declarations_are_named():
    with ScriptedOpenAI(["ok"], refuse=("messages",)) as server:
        async def main():
            client = LLMClient([Endpoint(server.base_url, "m")], timeout=5, max_retries=3, backoff=0.001)
            try:
                await client.chat([{"role": "user", "content": "x"}])
            finally:
                await client.aclose()
        with pytest.raises(LLMError, match="HTTP 400"):
            asyncio.run(main())
        assert len(server.requests) == 1
    with pytest.raises(ValueError, match="drop_params \\['messages'\\] cannot be dropped"):
        Endpoint("http://127.0.0.1:1/v1", "m", drop_params=["messages"])
    with pytest.raises(ValueError, match="token_param='max_len'"):
        Endpoint("http://127.0.0.1:1/v1", "m", token_param="max_len")
    # Servers that name the field only in their message text.
    assert _refused_param(b'{"error": {"message": "Unsupported parameter: \'top_p\' is not supported"}}') == "top_p"
    assert _refused_param(b"unsupported value: 'temperature'") == "temperature"
    # A 400 about a value, not about the field being accepted, changes nothing.
    too_large = {"error": {"message": "max_tokens is too large: 99999. This model supports at most 4096 "
                                      "completion tokens", "param": "max_tokens", "code": "invalid_value"}}
    assert _refused_param(json.dumps(too_large).encode()) == ""


def test_run_agent_against_a_reasoning_model_writes_reports(tmp_path):
    from test_eval_run_agent import REPORT, scripted_policy

    from experiments import run_agent

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": 1, "prompt": "What are coral reefs made of?"}) + "\n")
    out = tmp_path / "run"
    with ScriptedOpenAI(scripted_policy, reasoning=True) as server:
        rc = run_agent.main(["--endpoint", server.base_url, "--model", "o-model", "--questions", str(questions),
                             "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--judge", "none"])
        stats = dict(server.stats)
    assert rc == 0
    assert stats["ok"] == 3 and stats["refused_max_tokens"] == 1 and stats["refused_stop"] == 1, stats
    rows = [json.loads(line) for line in (out / "output.jsonl").read_text().splitlines()]
    assert rows[0]["article"] == REPORT
    text = json.loads((out / "trajectories.jsonl").read_text())["messages"][2]["content"]
    assert text.endswith("</suggested_answer>") and "past the stop" not in text
    assert json.loads((out / "scores.json").read_text())["summary"]["with_report"] == 1


def test_synth_teacher_on_a_reasoning_model_produces_an_accepted_trajectory(tmp_path):
    from test_synth_workflow import check_record, openai_config, scripted_teacher, synthesize_once

    with ScriptedOpenAI(scripted_teacher, reasoning=True) as server:
        cfg = openai_config(tmp_path, server.base_url, **{"workflow.candidates": 1})
        outcome = synthesize_once(cfg, "How does photosynthesis affect the carbon cycle?")
        record, reason = outcome.record, outcome.rejections
        stats = dict(server.stats)
    assert record is not None, reason
    check_record(record)
    llm = record["meta"]["llm"]
    assert llm["failures"] == 0 and llm["reasoning_tokens"] > 0 and llm["adaptations"] >= 2
    assert stats["refused_max_tokens"] == 1 and stats["refused_temperature"] == 1, stats


def test_llm_judge_on_a_reasoning_model_scores():
    from synth.judge import DIMENSIONS, LLMJudge

    rubric = json.dumps({d: 7 for d in DIMENSIONS} | {"justification": "ok"})
    with ScriptedOpenAI([rubric], reasoning=True) as server:
        async def main():
            llm = LLMClient([Endpoint(server.base_url, "o-judge")], timeout=5, max_retries=2, backoff=0.001)
            try:
                return await LLMJudge(llm).score("What are coral reefs?", "my report")
            finally:
                await llm.aclose()
        result = asyncio.run(main())
        stats = dict(server.stats)
    assert not result.abstained and result.overall == pytest.approx(0.7)
    assert stats["ok"] == 1 and stats["refused_max_tokens"] == 1 and stats["refused_temperature"] == 1


def test_evaluation_judge_on_a_reasoning_model_reads_its_json():
    from experiments.eval.judge import Judge

    with ScriptedOpenAI(['Here it is: {"score": 8}'], reasoning=True) as server:
        judge = Judge.from_endpoint(server.base_url, "o-eval", max_retries=1, backoff=0.001)

        async def main():
            try:
                return await judge.ask("Rate it.", lambda data: data["score"], what="rating")
            finally:
                await judge.client.aclose()
        assert asyncio.run(main()) == 8
        assert server.stats["ok"] == 1 and server.stats["refused_max_tokens"] == 1

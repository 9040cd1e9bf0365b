"""Every client of the synth service in this project sends $SYNTH_TOKEN: a token-protected `synth.service` on
loopback answers the RL tool calls and judge calls, experiments.run_agent's tools and judge, and the embedded
evaluation's judge, over real HTTP; without the token the same calls are refused (so the token is what passes)."""
import asyncio

import pytest
from scripted_openai import LocalServer

from experiments import run_agent
from experiments.eval import embedded
from oresearcher import protocol
from oresearcher.rl import rewards, rollout, synth_service
from synth.config import load_config
from synth.service import create_app

TOKEN = "t0ken-for-tests"
QUESTION = "What is a volcano?"
REPORT = ("# Volcano\nA volcano is a rupture in the crust where lava escapes [1].\n\n## Conclusion\nIt erupts [1].\n\n"
          "## References\n[1]. https://en.wikipedia.org/wiki/Volcano - Volcano")
RESPONSE = f"<think>done</think>\n<suggested_answer>{REPORT}</suggested_answer>"


@pytest.fixture
def protected(tmp_path, monkeypatch):
    """A synth service whose /v1 routes need `Authorization: Bearer $SYNTH_TOKEN`."""
    monkeypatch.setenv("SYNTH_TOKEN", TOKEN)
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"),
                                           "service.store": str(tmp_path / "jobs.sqlite"),
                                           "service.token_env": "SYNTH_TOKEN"})
    with LocalServer(create_app(cfg)) as server:
        yield server.url


def test_rl_tool_and_judge_calls_send_the_token(protected, monkeypatch):
    search = protocol.WebSearch(["volcano eruption"], 2)
    # the first search builds the corpus index (seconds alone, minutes on a loaded machine)
    [(body, record)] = asyncio.run(rollout.call_tools(protected, [search], 600.0))
    assert record.ok and body.startswith("# Search Summary"), record.error
    [reward] = asyncio.run(rewards.score_all(protected, [QUESTION], [RESPONSE], rewards.RewardConfig()))
    assert not reward.abstained and reward.judge == "heuristic" and 0.0 <= reward.base <= 1.0, reward.reason
    synth_service.check_token(protected)            # the start-up check passes with the token

    monkeypatch.delenv("SYNTH_TOKEN")
    [(body, record)] = asyncio.run(rollout.call_tools(protected, [search], 60.0))
    assert not record.ok and "401" in record.error and body.startswith("# Tool Error")
    [reward] = asyncio.run(rewards.score_all(protected, [QUESTION], [RESPONSE], rewards.RewardConfig()))
    assert reward.abstained and "401" in reward.reason
    with pytest.raises(RuntimeError, match=r"refuses this run: \$SYNTH_TOKEN is not set"):
        synth_service.check_token(protected)
    monkeypatch.setenv("SYNTH_TOKEN", "wrong")
    with pytest.raises(RuntimeError, match="is not the service's token"):
        synth_service.check_token(protected)


def test_run_agent_tools_and_judge_send_the_token(protected):
    async def calls():
        tools = run_agent.make_tools(protected, None)
        observation, ok = await tools.run(protocol.WebSearch(["volcano"], 2))
        verdict = await run_agent.make_judge(tools)(QUESTION, REPORT, RESPONSE)
        return observation, ok, verdict
    observation, ok, verdict = asyncio.run(calls())
    assert ok and observation.startswith("# Search Summary")
    assert verdict["abstained"] is False and verdict["judge"] == "heuristic"


def test_embedded_evaluation_judge_sends_the_token(protected):
    [verdict] = asyncio.run(embedded.judge_all(protected, [{"id": "q1", "prompt": QUESTION}], {"q1": RESPONSE}))
    assert verdict["abstained"] is False and verdict["judge"] == "heuristic"

"""A crawl_page call without goal= carries the researcher's preceding think/plan as `context`, from both the RL
rollout's tool calls and experiments.run_agent's HTTP tools, to a tool service on loopback that reads the goal
from it as synth.service does (synth.tools.goal_from_context)."""
import asyncio

from fastapi import FastAPI
from scripted_openai import LocalServer

from experiments import run_agent
from oresearcher import protocol, synth_client
from oresearcher.rl import rollout
from synth.tools import goal_from_context

EPISODE = ("<think>Find the first eruption.</think>\n<web_search>\nquery=Vesuvius\n</web_search>\n"
           "<observation>\n# Search\n1. [Vesuvius](https://en.wikipedia.org/wiki/Mount_Vesuvius)\n</observation>\n"
           "<think>The Vesuvius page should date the 79 AD eruption.</think>\n<plan>Read it.</plan>\n"
           "<crawl_page>\nurl=https://en.wikipedia.org/wiki/Mount_Vesuvius\n</crawl_page>")


def _service(received: list) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/tools/crawl_page")
    async def crawl_page(body: dict):
        received.append(body)
        goal = body.get("goal") or goal_from_context(body.get("context", ""))
        return {"observation": f"# Synthesis Report\ngoal: {goal}", "ok": True, "error": "", "pages": [], "meta": {}}

    return app


def test_a_crawl_without_goal_sends_the_preceding_think_and_plan():
    received: list = []
    no_goal = protocol.CrawlPage(["https://en.wikipedia.org/wiki/Mount_Vesuvius"])
    with_goal = protocol.CrawlPage(["https://en.wikipedia.org/wiki/Mount_Vesuvius"], "eruption year")
    expected = "goal: The Vesuvius page should date the 79 AD eruption. Read it."

    async def calls(url):
        async with synth_client.async_client() as client:
            rl = await rollout.call_tool(client, url, no_goal, 30.0, context=EPISODE)
            rl_goal = await rollout.call_tool(client, url, with_goal, 30.0, context=EPISODE)
        tools = run_agent.HttpTools(url)
        agent = await tools.run(no_goal, context=EPISODE)
        await tools.client.aclose()
        return rl, rl_goal, agent

    with LocalServer(_service(received)) as server:
        (body, record), (goal_body, _), (agent_body, ok) = asyncio.run(calls(server.url))
    assert body.endswith(expected) and agent_body.endswith(expected) and ok
    assert goal_body.endswith("goal: eruption year")
    # Only the text after the last observation travels, and only when the call names no goal.
    assert received[0]["context"].startswith("</observation>") and "Find the first" not in received[0]["context"]
    assert "context" not in received[1] and received[2]["context"] == received[0]["context"]
    assert "context" not in record.request   # the episode's record keeps the call as the policy wrote it

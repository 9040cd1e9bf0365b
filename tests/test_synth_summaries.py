"""Goal-conditioned page summaries: tools.crawl.summary='llm' wired from the config to the LLM client; the goal
from the call's goal= or the researcher's preceding think/plan; the extractive summary as the fallback, said in
the result's meta. Real HTTP on loopback: a page server (test allow-list) and scripted LLM servers."""
import asyncio
import re

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from scripted_openai import Faults, LocalServer, ScriptedOpenAI

from synth.tools import Tools, goal_from_context

PAGE = ("<html><head><title>Coral bleaching</title></head><body><article><p>Corals bleach when water stays "
        "1 degree Celsius above the summer maximum for several weeks.</p><p>Bleached corals can recover if "
        "temperatures fall quickly.</p></article></body></html>")


def page_site() -> FastAPI:
    app = FastAPI()

    @app.get("/bleaching")
    async def bleaching():
        return HTMLResponse(PAGE)

    return app


def summarizer(request: dict) -> str:
    goal = re.search(r"Research goal: (.*)", request["messages"][-1]["content"]).group(1)
    return f"LLM SUMMARY for goal [{goal}]: corals bleach 1 degree above the summer maximum."


def crawl(config, url, **kwargs):
    async def main():
        tools = Tools.from_config(config)
        try:
            return await tools.crawl_page([url], **kwargs), tools.owns_llm
        finally:
            await tools.aclose()
    return asyncio.run(main())


def config_for(tmp_path, page_port, llm_url, summary="llm"):
    return {"cache": False, "cache_dir": str(tmp_path),
            "crawl": {"backend": "http", "allow": [f"127.0.0.1:{page_port}"], "summary": summary,
                      "summary_tokens": 900, "llm": {"endpoints": [{"base_url": llm_url, "model": "summarizer"}], "timeout": 5,
                              "max_retries": 1, "backoff": 0.001}}}


def test_llm_summary_with_the_goal_from_the_call_or_from_the_preceding_think_and_plan(tmp_path):
    context = ("<think>The search listed a bleaching page.</think>\n<web_search>query=coral</web_search>"
               "<observation>results</observation>\n<think>I need the temperature that bleaches corals.</think>"
               "\n<plan>Read the bleaching page.</plan>\n")
    with LocalServer(page_site()) as site, ScriptedOpenAI(summarizer, reasoning=True) as llm:
        config = config_for(tmp_path, site.port, llm.base_url)
        url = f"{site.url}/bleaching"
        from_call, owned = crawl(config, url, goal="recovery of corals", context=context)
        from_context, _ = crawl(config, url, context=context)
        limits = {r.get("max_completion_tokens") for r in llm.requests if "max_tokens" not in r}
    assert owned   # built from the config, closed with the tools
    assert limits == {900}   # tools.crawl.summary_tokens, sent as the reasoning model wants it
    assert "LLM SUMMARY for goal [recovery of corals]" in from_call.observation
    assert from_call.meta["goal_source"] == "call"
    thoughts = "I need the temperature that bleaches corals. Read the bleaching page."
    assert f"LLM SUMMARY for goal [{thoughts}]" in from_context.observation
    assert from_context.meta == {"goal": thoughts, "goal_source": "context",
                                 "summaries": [{"url": url, "kind": "llm"}]}
    assert f"## [Coral bleaching]({url})" in from_context.observation


def test_a_failing_summary_llm_falls_back_to_the_extractive_summary_and_says_so(tmp_path):
    with LocalServer(page_site()) as site, ScriptedOpenAI(summarizer, faults=Faults(error_500=1.0)) as llm:
        result, _ = crawl(config_for(tmp_path, site.port, llm.base_url), f"{site.url}/bleaching",
                          goal="temperature that bleaches corals")
    assert result.ok and "1 degree Celsius above the summer maximum" in result.observation
    assert "HTTP 500" not in result.observation and "LLM" not in result.observation
    [note] = result.meta["summaries"]
    assert note["kind"] == "extractive" and "summary LLM failed" in note["fallback"] and "HTTP 500" in note["fallback"]


def test_summary_config_extractive_default_auto_and_errors(tmp_path):
    with LocalServer(page_site()) as site, ScriptedOpenAI(summarizer) as llm:
        url = f"{site.url}/bleaching"
        extractive, owned = crawl(config_for(tmp_path, site.port, llm.base_url, "extractive"), url, goal="bleach")
        assert not owned and len(llm.requests) == 0
        # "auto" with the openai teacher of a full config: the teacher's endpoints summarise.
        root = {"teacher": {"kind": "openai", "endpoints": [{"base_url": llm.base_url, "model": "teacher"}]},
                "tools": {**config_for(tmp_path, site.port, llm.base_url, "auto"), "crawl": {
                    "backend": "http", "allow": [f"127.0.0.1:{site.port}"], "summary": "auto"}}}
        auto, _ = crawl(root, url, goal="bleach")
        assert llm.requests[-1]["model"] == "teacher"
    assert extractive.meta["summaries"] == [{"url": url, "kind": "extractive"}]
    assert auto.meta["summaries"] == [{"url": url, "kind": "llm"}]
    with pytest.raises(ValueError, match="tools.crawl.llm.endpoints"):
        Tools.from_config({"crawl": {"summary": "llm"}})
    assert goal_from_context("<observation>x</observation>no thoughts") == ""

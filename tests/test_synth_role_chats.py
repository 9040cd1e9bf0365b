"""Role chats (workflow.role_chats): the extractive teacher's work as the chats of the openai teacher.

The strongest check that they are exactly those chats: a scripted OpenAI-compatible server (real HTTP) that
knows only the recorded chats, answering each request with the reply recorded after the identical message list,
plays every role for the openai teacher; the trajectories it gets are the extractive teacher's, byte for byte.
So a model that learns these replies is a `local` teacher (configs/synth.py:local) for this workflow.
"""
import asyncio
import json

from scripted_openai import ScriptedOpenAI

from synth.cli import role_chat_records
from synth.config import load_config
from synth.funnel import Synthesizer, run_async
from synth.teachers.openai import role_prompt

QUESTIONS = ["What is a volcano?", "How did the printing press change Europe?"]
SETTINGS = {"workflow.candidates": 1, "workflow.max_subtasks": 3, "workflow.step_budget": 4,
            "workflow.min_reasoning_steps": 0, "workflow.min_tool_calls": 0, "workflow.role_chats": True}


def synthesize(cfg) -> list:
    async def main():
        synth = Synthesizer.from_config(cfg)
        try:
            return await asyncio.gather(*(synth.synthesize(q, f"q{i}") for i, q in enumerate(QUESTIONS)))
        finally:
            await synth.aclose()
    return run_async(main())


def test_role_chats_replayed_to_the_openai_teacher_give_the_same_trajectories(tmp_path):
    cache = str(tmp_path / "cache")
    extractive = synthesize(load_config("configs/synth.py", {**SETTINGS, "tools.cache_dir": cache}))
    assert all(o.record is not None for o in extractive)
    chats = [c for o in extractive for c in role_chat_records(o.record)]
    roles = [c["id"].split("/")[1] for c in chats]
    subtasks = [o.record["meta"]["subtasks"] for o in extractive]
    assert roles == [r for n in subtasks for r in ["planner", *(f"researcher-{k}" for k in range(1, n + 1)),
                                                     "summarizer"]]

    # every assistant turn after the role's worked examples, keyed by the exact messages before it
    replies = {}
    for chat in chats:
        messages = chat["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                replies[json.dumps(messages[:i])] = message["content"]
    missed = []

    def responder(request: dict) -> str:
        key = json.dumps(request["messages"])
        if key not in replies:
            missed.append(request["messages"][-1]["content"][:200])
            return "no such chat"
        return replies[key]

    with ScriptedOpenAI(responder, model="replay") as server:
        cfg = load_config("configs/synth.py:openai", {
            **SETTINGS, "tools.cache_dir": cache, "teacher.endpoints": [{"base_url": server.base_url, "model": "replay"}],
            "judge.kind": "heuristic", "tools.search.backend": "local", "tools.crawl.backend": "local"})
        replayed = synthesize(cfg)
    assert not missed, missed[:3]
    # one request per assistant turn that is not one of the role's worked examples
    shots = {role: sum(m["role"] == "assistant" for m in role_prompt(role))
             for role in ("planner", "researcher", "summarizer")}
    turns = [sum(m["role"] == "assistant" for m in c["messages"]) - shots[c["id"].split("/")[1].split("-")[0]]
             for c in chats]
    assert len(server.requests) == sum(turns) and max(turns) > 1     # researchers took several steps
    for ours, theirs in zip(extractive, replayed):
        assert theirs.record is not None, theirs.rejections
        assert theirs.record["messages"] == ours.record["messages"]     # the whole protocol trajectory
        assert theirs.record["report"] == ours.record["report"]
        assert theirs.record["meta"]["teachers"] == ["openai:replay"]
        assert theirs.record["meta"]["llm"]["by_model"] == {"replay": theirs.record["meta"]["llm"]["calls"]}
        assert theirs.record["role_chats"] == ours.record["role_chats"]  # the same chats, now really sent

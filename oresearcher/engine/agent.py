"""What the drivers need from an agent, and the lockstep driver over a Sampler session.

An agent sees each finished turn and decides what follows. Its asynchronous call gets an httpx client owned by
the driver (one per turn in lockstep, one for the whole run in the engine); its result is turned into tokens by
`on_result` on the driver's own thread, so tokenizers and records are never touched from two threads at once.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import httpx

from oresearcher import synth_client
from oresearcher.sampler import Completion, Sampler, SamplingParams

Call = Callable[[httpx.AsyncClient], Awaitable[Any]]


class Agent(Protocol):
    def budget(self, episode: int) -> int:
        """Tokens the next turn of `episode` may generate (the driver also caps it by the room under max_len)."""

    def on_turn(self, episode: int, completion: Completion) -> Call | None:
        """The turn just generated; None ends the episode, else the call whose result `on_result` receives."""

    def on_result(self, episode: int, result: Any) -> Sequence[int] | None:
        """Tokens to append to the episode (prefilled, never sampled) before its next turn; None ends it."""


def run_lockstep(sampler: Sampler, prompts: Sequence[Sequence[int]], agent: Agent, params: SamplingParams,
                 max_len: int) -> dict[str, float]:
    """All episodes as rows of one Sampler session: each turn decodes every live row until all have stopped,
    then sends all calls and waits for the slowest. Turn k samples with seed params.seed * 1000 + k."""
    import time

    session = sampler.start(prompts, max_len=max_len)
    live = list(range(len(prompts)))
    timings = {"time/generate": 0.0, "time/tools": 0.0}
    turn = 0
    while live:
        turn_params = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                     max_new_tokens=1, stop=params.stop, seed=params.seed * 1000 + turn)
        start = time.perf_counter()
        outs = sampler.step(session, live, turn_params, [agent.budget(i) for i in live])
        timings["time/generate"] += time.perf_counter() - start
        calls, waiting = [], []
        for i, out in zip(live, outs):
            call = agent.on_turn(i, out)
            if call is not None:
                calls.append(call)
                waiting.append(i)
        start = time.perf_counter()
        results = asyncio.run(_gather(calls)) if calls else []
        timings["time/tools"] += time.perf_counter() - start
        live = []
        for i, result in zip(waiting, results):
            more = agent.on_result(i, result)
            if more is not None:
                session.tokens[i].extend(more)
                live.append(i)
        turn += 1
    return timings


async def _gather(calls: list[Call]):
    async with synth_client.async_client() as client:   # sends $SYNTH_TOKEN when set
        return await asyncio.gather(*(call(client) for call in calls))

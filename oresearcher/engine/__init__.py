"""The rollout engine: fixed slots, continuous batching, tool calls that never stall the batch.

    engine = Engine(model, tokenizer, slots=8)
    stats = engine.run(prompts, agent, SamplingParams(temperature=1.0), max_len=8192)

An episode is token-in/token-out: a prompt, then turns. A turn decodes until a stop string, EOS or the turn's
token budget; the `agent` (see `Agent`) then ends the episode or names an asynchronous call (a tool over HTTP)
whose result becomes tokens appended to the episode (an observation) before the next turn. `run` drives every
episode to its end and returns scheduling statistics; the agent keeps the episodes' records. A run can also be fed
new prompts, each with its own sampling parameters, while it goes: `oresearcher.serve` keeps one run going and
feeds it its requests.

Two drivers run the same agent: `Engine.run` (continuous batching, core.py) and `lockstep.run` (today's
Sampler session: every live row decodes until it stops, then all calls go out and the slowest is waited for),
kept for the equality tests and the throughput benchmark (experiments/bench/rollout_throughput.py).
"""
from oresearcher.engine.agent import Agent
from oresearcher.engine.core import Engine

__all__ = ["Agent", "Engine"]

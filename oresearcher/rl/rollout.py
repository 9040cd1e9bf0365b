"""Multi-turn tool-use rollouts: groups of G episodes per question, on the rollout engine (or a lockstep session).

One episode, token-in/token-out:
    prompt = chat template(system: protocol.system_prompt(), user: question) + assistant header
    repeat:  generate until </web_search>, </crawl_page>, </suggested_answer>, EOS or a token budget
             at a tool stop: parse the call (protocol.pending_tool_call), POST it to the synth tool endpoint,
             append the tokens of protocol.observation(result)  (loss-masked: written by the environment)
    until:   </suggested_answer> ("answer"), EOS ("eos"), more than `max_turns` tool calls ("turn_limit"),
             or the episode's token limit ("token_limit").

The turn logic is `RolloutAgent` (oresearcher.engine.Agent), run by either driver (config rollout.backend):
"engine" (oresearcher.engine.Engine: episodes fill fixed slots, a slot whose tool call is out is parked while the
others decode, and a finished episode's slot takes the next one) or "lockstep" (one Sampler session: rows waiting
for tools are continued together in the next step, after the slowest call of the turn). Tool calls go out over
asyncio + httpx. Sampled ids are kept as ids; only the observation text is tokenised. The per-token record
(tokens, loss mask, sampler logprobs) is what GRPO trains on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import numpy as np

from oresearcher import protocol, synth_client
from oresearcher.sampler import SamplingParams


@dataclasses.dataclass
class RolloutConfig:
    group_size: int = 8
    max_turns: int = 25                 # tool calls per episode
    max_tokens: int = 8192              # prompt + response (observations included) per episode
    max_turn_tokens: int = 2048         # tokens generated between two tool calls
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    tool_timeout_s: float = 60.0
    max_observation_tokens: int = 1024  # longer observations are cut (an error-free, readable truncation)

    @classmethod
    def from_config(cls, cfg) -> RolloutConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(cfg).items() if k in names})


@dataclasses.dataclass
class ToolCall:
    tool: str                           # "web_search" | "crawl_page"
    request: dict                       # the JSON sent ({} for a malformed call: nothing is sent)
    ok: bool
    error: str
    seconds: float
    observation_tokens: int = 0


@dataclasses.dataclass
class Episode:
    question: str
    group: int                          # index of the question in the batch
    prompt_len: int
    tokens: list[int]                   # prompt + response, observations inside
    policy_mask: list[bool]             # per token: True = sampled by the policy (trained on)
    logprobs: list[float]               # per token: the sampler's logprob (0.0 where not sampled)
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
    finish: str = ""
    response: str = ""                  # decoded response (what rewards read)

    @property
    def response_tokens(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def policy_tokens(self) -> int:
        return int(sum(self.policy_mask))


def build_prompt(tokenizer, question: str) -> list[int]:
    messages = [{"role": "system", "content": protocol.system_prompt()}, {"role": "user", "content": question}]
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


# -------------------------------------------------------------------------------------------------- tools
async def call_tool(client: httpx.AsyncClient, url: str, call, timeout_s: float, context: str = ""
                    ) -> tuple[str, ToolCall]:
    """(observation body, record) for one parsed call; failures become error observations, never exceptions.
    context: the episode's text before the call; a crawl_page without goal= sends its last think/plan, which the
    service summarises the pages for (the record keeps the request without it)."""
    start = time.perf_counter()
    if isinstance(call, protocol.ToolCallError):
        body = protocol.render_error(call.tag, f"malformed <{call.tag}> call: {call.reason}")
        return body, ToolCall(call.tag, {}, False, call.reason, 0.0)
    if isinstance(call, protocol.WebSearch):
        tool, request = "web_search", {"queries": list(call.queries), "num": call.num}
    else:
        tool, request = "crawl_page", {"urls": list(call.urls), "goal": call.goal}
    sent = request
    if tool == "crawl_page" and not call.goal.strip() and context:
        sent = {**request, "context": synth_client.crawl_context(context)}
    try:
        resp = await client.post(f"{url}/v1/tools/{tool}", json=sent, timeout=timeout_s)
        resp.raise_for_status()
        out = resp.json()
        body, ok, error = str(out.get("observation", "")), bool(out.get("ok", True)), out.get("error") or ""
    except (httpx.HTTPError, ValueError) as e:
        body = protocol.render_error(tool, f"the tool service failed: {type(e).__name__}")
        ok, error = False, f"{type(e).__name__}: {e}"
    return body, ToolCall(tool, request, ok, error, time.perf_counter() - start)


async def call_tools(url: str, calls: list, timeout_s: float) -> list[tuple[str, ToolCall]]:
    """`call_tool` for each call, concurrently, over one client that sends the synth token ($SYNTH_TOKEN)."""
    async with synth_client.async_client() as client:
        return await asyncio.gather(*(call_tool(client, url, c, timeout_s) for c in calls))


def truncate_observation(tokenizer, body: str, max_tokens: int) -> str:
    """The observation body as the policy sees it: whole when its observation element fits in `max_tokens`
    tokens, else its first max_tokens // 2 tokens and a readable truncation note (the warm start's SFT data is
    cut the same way, so the policy is trained on what rollouts show it)."""
    if len(tokenizer.encode(protocol.observation(body))) <= max_tokens:
        return body
    return tokenizer.decode(tokenizer.encode(body)[:max_tokens // 2]) + "\n[... observation truncated ...]"


def _ends_with_tool_call(text: str) -> str | None:
    """The text up to the end of the last tool-call closer in `text` (a token may run past the stop string)."""
    ends = [text.rfind(s) + len(s) for s in ("</web_search>", "</crawl_page>") if s in text]
    return text[:max(ends)] if ends else None


# ------------------------------------------------------------------------------------------------ rollout
class RolloutAgent:
    """The episodes' records and the protocol's turn logic (oresearcher.engine.Agent), shared by both drivers."""

    def __init__(self, tokenizer, episodes: list[Episode], synth_url: str, cfg: RolloutConfig):
        self.tokenizer, self.episodes, self.url, self.cfg = tokenizer, episodes, synth_url, cfg
        self.tool_seconds = 0.0

    def budget(self, i: int) -> int:
        return self.cfg.max_turn_tokens

    def on_turn(self, i: int, out):
        ep, cfg, tok = self.episodes[i], self.cfg, self.tokenizer
        ep.tokens.extend(out.tokens)
        ep.policy_mask.extend([True] * len(out.tokens))
        ep.logprobs.extend(out.logprobs)
        if out.finish_reason == "eos":
            ep.finish = "eos"
            return None
        if out.finish_reason == "length":
            ep.finish = "token_limit" if len(ep.tokens) >= cfg.max_tokens else "turn_tokens"
            return None
        if "</suggested_answer>" in tok.decode(out.tokens):
            ep.finish = "answer"
            return None
        if len(ep.tool_calls) >= cfg.max_turns:
            ep.finish = "turn_limit"
            return None
        text = _ends_with_tool_call(tok.decode(ep.tokens[ep.prompt_len:]))
        call = protocol.pending_tool_call(text) if text is not None else None
        if call is None:
            ep.finish = "no_call"
            return None
        return lambda client: call_tool(client, self.url, call, cfg.tool_timeout_s, context=text)

    def on_result(self, i: int, result):
        body, record = result
        ep, cfg, tok = self.episodes[i], self.cfg, self.tokenizer
        self.tool_seconds += record.seconds
        obs = tok.encode(protocol.observation(truncate_observation(tok, body, cfg.max_observation_tokens)))
        record.observation_tokens = len(obs)
        ep.tool_calls.append(record)
        if len(ep.tokens) + len(obs) >= cfg.max_tokens - 1:
            ep.finish = "token_limit"
            return None
        ep.tokens.extend(obs)
        ep.policy_mask.extend([False] * len(obs))
        ep.logprobs.extend([0.0] * len(obs))
        return obs


def make_generator(model, tokenizer, rollout_config, episodes_per_step: int):
    """The rollout's generator per the config's rollout.backend: "engine" (oresearcher.engine.Engine with
    rollout.slots slots, 0 = one per episode of a step) or "lockstep" (a Sampler session)."""
    from oresearcher.engine import Engine
    from oresearcher.sampler import Sampler

    backend = str(rollout_config.get("backend", "engine"))
    chunk = int(rollout_config.get("prefill_chunk", 512))
    if backend == "lockstep":
        return Sampler(model, tokenizer, prefill_chunk=chunk)
    if backend == "engine":
        slots = int(rollout_config.get("slots", 0)) or episodes_per_step
        return Engine(model, tokenizer, slots=slots, chunk=int(rollout_config.get("chunk", 16)),
                      prefill_chunk=chunk, tensor=int(rollout_config.get("tensor", 0)))
    raise ValueError(f"rollout.backend={backend!r}: use 'engine' or 'lockstep'")


def rollout(generator, tokenizer, questions: list[str], synth_url: str, cfg: RolloutConfig,
            seed: int = 0) -> tuple[list[Episode], dict[str, float]]:
    """G = cfg.group_size episodes per question on `generator`: an oresearcher.engine.Engine (continuous
    batching: a slot whose tool call is out is parked while the others decode) or a Sampler (lockstep: all
    episodes as rows of one session, each turn waiting for the slowest row and the slowest call). Returns the
    episodes (grouped: episode k belongs to question k // G) and timings {"time/generate", "time/tools"} in
    seconds (with the engine, time/generate is the rollout's wall time and time/tools the calls' summed time,
    which overlaps it)."""
    from oresearcher.engine import Engine
    from oresearcher.engine.agent import run_lockstep

    prompts = [build_prompt(tokenizer, q) for q in questions]
    too_long = [i for i, p in enumerate(prompts) if len(p) >= cfg.max_tokens - 16]
    if too_long:
        raise ValueError(f"questions {too_long}: prompt of {len(prompts[too_long[0]])} tokens leaves no room under "
                         f"rollout.max_tokens={cfg.max_tokens}; raise rollout.max_tokens")
    g = cfg.group_size
    episodes = [Episode(q, i, len(p), list(p), [False] * len(p), [0.0] * len(p))
                for i, (q, p) in enumerate(zip(questions, prompts)) for _ in range(g)]
    agent = RolloutAgent(tokenizer, episodes, synth_url, cfg)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_turn_tokens, stop=protocol.STOP_STRINGS, seed=seed)
    starts = [list(e.tokens) for e in episodes]
    if isinstance(generator, Engine):
        stats = generator.run(starts, agent, params, max_len=cfg.max_tokens)
        timings = {"time/generate": stats["time/generate"], "time/tools": agent.tool_seconds,
                   "rollout/slot_occupancy": stats["slot_occupancy"]}
    else:
        timings = run_lockstep(generator, starts, agent, params, max_len=cfg.max_tokens)
    for ep in episodes:
        ep.response = tokenizer.decode(ep.tokens[ep.prompt_len:])
    return episodes, timings


# ------------------------------------------------------------------------------------------- to a batch
def to_batch(episodes: list[Episode], advantages: np.ndarray, length_multiple: int = 128,
             rows: int | None = None) -> dict[str, np.ndarray]:
    """The GRPO training batch [N, T]: input_ids / targets (next token), loss_mask (policy-sampled targets),
    old_logp (sampler logprob of each target), positions, segment_ids, advantages [N]; and the policy positions
    policy_index [N, P] (the t with loss_mask, left-aligned, 0-padded) with policy_mask [N, P], so the loss
    projects onto the vocabulary only there.

    T is the longest episode rounded up to a power of two times `length_multiple`, P likewise for the most
    policy tokens in a row, and N is padded to `rows` with empty rows (loss_mask 0): few shapes ever compile."""
    n = rows or len(episodes)
    bucket = lambda k: length_multiple * (1 << max(0, -(-k // length_multiple) - 1).bit_length())
    t = bucket(max(len(e.tokens) for e in episodes) - 1)
    p = min(t, bucket(max(1, max(sum(e.policy_mask[1:]) for e in episodes))))
    adv = np.zeros((n,), np.float32)
    adv[:len(episodes)] = advantages
    batch = {"input_ids": np.zeros((n, t), np.int32), "targets": np.zeros((n, t), np.int32),
             "loss_mask": np.zeros((n, t), bool), "old_logp": np.zeros((n, t), np.float32),
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy(),
             "segment_ids": np.ones((n, t), np.int32), "advantages": adv,
             "policy_index": np.zeros((n, p), np.int32), "policy_mask": np.zeros((n, p), bool)}
    for i, e in enumerate(episodes):
        k = len(e.tokens) - 1
        batch["input_ids"][i, :k] = e.tokens[:-1]
        batch["targets"][i, :k] = e.tokens[1:]
        batch["loss_mask"][i, :k] = e.policy_mask[1:]
        batch["old_logp"][i, :k] = e.logprobs[1:]
        where = np.nonzero(batch["loss_mask"][i])[0]
        batch["policy_index"][i, :len(where)] = where
        batch["policy_mask"][i, :len(where)] = True
    return batch

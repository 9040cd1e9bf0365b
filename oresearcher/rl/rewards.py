"""The composite AI-feedback reward (PAPER §6): R = w_base * R_base + w_tool * R_tool + w_format * R_format.

- R_format in {0, 1} and R_tool in {-1} U [0, 1] are computed locally by `oresearcher.protocol` (the one home
  of the protocol): R_tool with N = min(#web_search, #crawl_page), distinct calls (a repeated call adds nothing):
  N < low -> 0, N > high -> over_penalty, else (N - low) / (high - low). The band's defaults (2 <= N <= 8) are
  protocol.TOOL_LOW / TOOL_HIGH, which the synthesizer's funnel and teachers read too (configs/synth.py).
- R_base in [0, 1] is the judge's overall score from `POST /v1/judge` of the synth service (the mean of
  comprehensiveness, insight, instruction following and readability).
- A judge that abstains (or fails: HTTP error, malformed answer) gives *no* reward: the episode is marked
  `abstained`, masked out of the loss and out of its group's statistics, and counted. It is never a 0.
- An episode that ends without a `<suggested_answer>` has no report to judge: R_base = 0 without asking the judge
  (that is the policy's failure, not the judge's).

Normalisation ("unit", the default) maps R affinely onto [0, 1] using its attainable range with the configured
weights: R_min = w_tool * over_penalty (when negative), R_max = w_base + w_tool + w_format. Group-normalised
advantages are invariant to this affine map, so it only changes what is reported. "none" reports R as is.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx

from oresearcher import protocol, synth_client


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    w_base: float = 0.6
    w_tool: float = 0.2
    w_format: float = 0.2
    tool_low: int = protocol.TOOL_LOW             # the band's one home: oresearcher/protocol.py
    tool_high: int = protocol.TOOL_HIGH
    tool_over_penalty: float = protocol.TOOL_OVER_PENALTY
    normalize: str = "unit"          # "unit" (onto [0, 1]) or "none"
    judge_timeout_s: float = 120.0

    @classmethod
    def from_config(cls, cfg) -> RewardConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(cfg).items() if k in fields})


@dataclasses.dataclass
class Reward:
    total: float | None          # None when the judge abstained
    base: float | None
    tool: float
    format: float
    abstained: bool
    reason: str = ""             # why the judge abstained
    judge: str = ""              # which judge scored ("heuristic", "llm:<model>", "none: no report")
    judge_seconds: float = 0.0


def composite(r_base: float, r_tool: float, r_format: float, cfg: RewardConfig) -> float:
    """w_base R_base + w_tool R_tool + w_format R_format, then the configured normalisation."""
    raw = cfg.w_base * r_base + cfg.w_tool * r_tool + cfg.w_format * r_format
    if cfg.normalize == "none":
        return raw
    if cfg.normalize != "unit":
        raise ValueError(f"reward.normalize={cfg.normalize!r}: use 'unit' or 'none'")
    lo = min(0.0, cfg.w_tool * cfg.tool_over_penalty)
    hi = cfg.w_base + cfg.w_tool + cfg.w_format
    return (raw - lo) / (hi - lo)


def local_parts(response: str, cfg: RewardConfig) -> tuple[float, float]:
    """(R_tool, R_format) of a response text (the assistant part of an episode, observations inside)."""
    r_tool = protocol.tool_reward(response, low=cfg.tool_low, high=cfg.tool_high, over_penalty=cfg.tool_over_penalty)
    return float(r_tool), float(protocol.format_reward(response))


async def judge(client: httpx.AsyncClient, url: str, question: str, report: str, trajectory: str,
                timeout_s: float) -> tuple[float | None, str, str]:
    """(R_base or None if abstained, judge name, abstention reason) from POST {url}/v1/judge."""
    try:
        resp = await client.post(f"{url}/v1/judge", timeout=timeout_s,
                                 json={"question": question, "report": report, "trajectory": trajectory})
        resp.raise_for_status()
        body = resp.json()
    except (httpx.HTTPError, ValueError) as e:
        return None, "", f"judge request failed: {type(e).__name__}: {e}"
    if body.get("abstained"):
        return None, str(body.get("judge", "")), str(body.get("reason", "judge abstained"))
    overall = body.get("overall")
    if not isinstance(overall, (int, float)) or not 0.0 <= float(overall) <= 1.0:
        return None, str(body.get("judge", "")), f"judge answer has no overall score in [0, 1]: {body!r:.200}"
    return float(overall), str(body.get("judge", "")), ""


async def score(client: httpx.AsyncClient, url: str, question: str, response: str,
                cfg: RewardConfig) -> Reward:
    """The reward of one episode; `response` is the assistant text (tool calls and observations inside)."""
    r_tool, r_format = local_parts(response, cfg)
    report = protocol.extract_report(response)
    start = time.perf_counter()
    if report is None or not report.strip():
        base, name, reason = 0.0, "none: no report", ""
    else:
        base, name, reason = await judge(client, url, question, report, response, cfg.judge_timeout_s)
    seconds = time.perf_counter() - start
    if base is None:
        return Reward(None, None, r_tool, r_format, True, reason, name, seconds)
    return Reward(composite(base, r_tool, r_format, cfg), base, r_tool, r_format, False, "", name, seconds)


async def score_all(url: str, questions: list[str], responses: list[str], cfg: RewardConfig,
                    max_concurrency: int = 16) -> list[Reward]:
    """Rewards of many episodes, judged concurrently (at most `max_concurrency` requests in flight)."""
    gate = asyncio.Semaphore(max_concurrency)
    async with synth_client.async_client() as client:   # sends $SYNTH_TOKEN when set
        async def one(q, r):
            async with gate:
                return await score(client, url, q, r, cfg)
        return list(await asyncio.gather(*(one(q, r) for q, r in zip(questions, responses))))

"""Run a policy on a question set with the protocol loop; write reports, trajectories and scores.

    python -m experiments.run_agent --endpoint http://127.0.0.1:8000/v1 --model NAME \
        --questions experiments/data/embedded_eval.jsonl --out runs/smollm2 \
        [--api completions|chat] [--tools local|http://127.0.0.1:8100] [--max-turns 25]

The loop (PAPER §4): generate until a stop string (</web_search>, </crawl_page>, </suggested_answer>); if the
text now ends with a tool call, run it (synth `Tools` in process, or the synth HTTP service) and append
`protocol.observation(...)`; continue until </suggested_answer>, the end of generation, a turn limit or a
token limit. OpenAI-compatible servers drop the stop string from the text they return, so the loop puts
back the closing tag of the element the text ends inside.

Two ways to talk to the policy:
  * `completions` (our `oresearcher.serve`, vLLM, ...): one growing assistant text, observations inside,
    continued with /v1/completions after the chat template's generation prompt (token-in/token-out exact
    for our server). The template comes from `--tokenizer` (a HF tokenizer dir, or `gguf:embedded`).
  * `chat` (any chat model): the assistant's pieces are assistant messages and each observation is a user
    message; the trajectory still records one assistant text with the observations inside.

Input rows: {id, prompt} (the benchmark's query layout; `question` is accepted for `prompt`). Outputs in --out:
  output.jsonl        {id, prompt, article}           (the benchmark's output layout; article = final report)
  trajectories.jsonl  trajectory records (DESIGN contract 2)
  scores.json         per question: R_format, R_tool, tool calls, turns, heuristic judge, KPR (if key points)
Exit status 1 when no question produced a report because the policy endpoint failed (the outputs are still
written, each failure named in its trajectory's stop_reason); a failure on some questions only is reported on
stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from oresearcher import protocol, synth_client

CLOSERS = {s: s for s in protocol.STOP_STRINGS}


# --------------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One question's run. `pieces` alternate model text and environment text (observations)."""
    id: str
    question: str
    system: str
    pieces: list[tuple[str, str]] = field(default_factory=list)   # ("model" | "env", text)
    turns: int = 0
    stop_reason: str = ""
    tool_errors: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "tools": 0.0})
    generated_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.pieces)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str      # "stop" (a stop string or end of sequence) or "length"
    tokens: int = 0


class Policy(Protocol):
    name: str

    async def generate(self, episode: Episode, *, stop: tuple[str, ...], max_tokens: int) -> Completion:
        """Continue the episode's assistant text."""


def restore_stop(text: str) -> str:
    """Put back the stop string a server removed: close the tool/answer element the text ends inside."""
    if text.endswith(protocol.STOP_STRINGS):
        return text
    spans = protocol.parse(text)
    last = next((s for s in reversed(spans) if s.tag is not None), None)
    if last is not None and not last.closed and f"</{last.tag}>" in CLOSERS:
        return text + f"</{last.tag}>"
    return text


def cut_at_stop(text: str) -> str:
    """Text up to and including its first stop string (a server that ignores `stop` keeps generating)."""
    ends = [text.find(s) + len(s) for s in protocol.STOP_STRINGS if s in text]
    return text[:min(ends)] if ends else text


# ------------------------------------------------------------------------------------------- policies
class EndpointPolicy:
    """Any OpenAI-compatible endpoint, in `chat` or `completions` mode (module docstring).

    Chat requests go through synth's LLM client (retries on timeouts, 5xx and 429; key from `api_key_env`).
    A chat answer carries no finish reason there, so an answer that ends in neither a tool call nor the final
    answer ends the episode. Completions requests (our own server) go straight through httpx.
    """

    def __init__(self, base_url: str, model: str, *, api: str = "chat", template=None,
                 temperature: float = 0.0, top_p: float = 1.0, api_key_env: str = "", timeout: float = 600.0,
                 max_retries: int = 6, backoff: float = 1.0):
        if api not in ("chat", "completions"):
            raise ValueError(f"api={api!r}: use 'chat' or 'completions'")
        if api == "completions" and template is None:
            raise ValueError("api='completions' needs a chat template (--tokenizer DIR or gguf:embedded)")
        self.base_url = base_url.rstrip("/")
        self.model, self.api, self.template = model, api, template
        self.temperature, self.top_p = temperature, top_p
        if api == "chat":
            from synth.llm import Endpoint, LLMClient

            self.client = LLMClient([Endpoint(self.base_url, model, api_key_env=api_key_env)], timeout=timeout,
                                    max_retries=max_retries, backoff=backoff)
        else:
            import os

            key = os.environ.get(api_key_env, "") if api_key_env else ""
            self.client = httpx.AsyncClient(timeout=timeout, trust_env=False,
                                            headers={"Authorization": f"Bearer {key}"} if key else {})
        self.name = f"{api}:{model}"

    def messages(self, ep: Episode) -> list[dict]:
        msgs = [{"role": "system", "content": ep.system}, {"role": "user", "content": ep.question}]
        for kind, text in ep.pieces:
            role = "assistant" if kind == "model" else "user"
            if msgs[-1]["role"] == role:
                msgs[-1]["content"] += text
            else:
                msgs.append({"role": role, "content": text})
        return msgs

    async def generate(self, ep: Episode, *, stop: tuple[str, ...], max_tokens: int) -> Completion:
        if self.api == "chat":
            result = await self.client.chat(self.messages(ep), temperature=self.temperature,
                                            max_tokens=max_tokens, stop=list(stop))
            return Completion(result.text, "stop", result.usage.completion_tokens)
        body = {"model": self.model, "prompt": self.template(ep.system, ep.question) + ep.text,
                "stop": list(stop), "max_tokens": max_tokens, "temperature": self.temperature,
                "top_p": self.top_p}
        url = f"{self.base_url}/completions"
        resp = await self.client.post(url, json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        choice = data["choices"][0]
        tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        return Completion(choice.get("text") or "", choice.get("finish_reason") or "stop", tokens)


# ---------------------------------------------------------------------------------------------- tools
class ToolRunner(Protocol):
    async def run(self, call, context: str = "") -> tuple[str, bool]:
        """(observation body, ok) for a parsed WebSearch / CrawlPage call. context: the episode's text before the
        call, whose last think/plan is a crawl_page's goal when the call names none."""


class LocalTools:
    """synth `Tools` in this process (its backends and its SQLite cache)."""

    def __init__(self, tools):
        self.tools = tools

    async def run(self, call, context: str = "") -> tuple[str, bool]:
        if isinstance(call, protocol.WebSearch):
            result = await self.tools.web_search(call.queries, call.num)
        else:
            result = await self.tools.crawl_page(call.urls, call.goal, context=context)
        return result.observation, bool(result.ok)


class HttpTools:
    """The synth service's tool endpoints (DESIGN contract 7), as RL rollouts call them."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        # token None: $SYNTH_TOKEN, as every client of the synth service in this project
        self.client = client or synth_client.async_client(token, timeout=300.0)

    async def run(self, call, context: str = "") -> tuple[str, bool]:
        if isinstance(call, protocol.WebSearch):
            path, body = "web_search", {"queries": call.queries, "num": call.num}
        else:
            path, body = "crawl_page", {"urls": call.urls, "goal": call.goal}
            if not call.goal.strip() and context:
                body["context"] = synth_client.crawl_context(context)
        resp = await self.client.post(f"{self.base_url}/v1/tools/{path}", json=body)
        if resp.status_code != 200:
            return protocol.render_error(path, f"tool service answered HTTP {resp.status_code}"), False
        data = resp.json()
        return data["observation"], bool(data.get("ok"))


# ------------------------------------------------------------------------------------------------ loop
@dataclass(frozen=True)
class Limits:
    max_turns: int = 25
    max_tokens_per_turn: int = 4096
    max_total_tokens: int = 65536
    # the observation as the policy sees it (body -> body): RL's truncate_observation at the policy's token limit,
    # so a policy is evaluated on what its rollouts showed it
    cut_observation: Callable[[str], str] | None = None


async def run_episode(ep: Episode, policy: Policy, tools: ToolRunner, limits: Limits) -> Episode:
    """Drive one episode to its end; never raises for a policy's malformed output (it ends the episode)."""
    while ep.turns < limits.max_turns:
        ep.turns += 1
        budget = min(limits.max_tokens_per_turn, limits.max_total_tokens - ep.generated_tokens)
        if budget <= 0:
            ep.stop_reason = "token limit"
            break
        t0 = time.perf_counter()
        out = await policy.generate(ep, stop=protocol.STOP_STRINGS, max_tokens=budget)
        ep.timings["generate"] += time.perf_counter() - t0
        ep.generated_tokens += out.tokens or max(1, len(out.text) // 4)
        piece = cut_at_stop(out.text)
        if out.finish_reason == "stop":
            piece = restore_stop(ep.text + piece)[len(ep.text):]
        ep.pieces.append(("model", piece))
        text = ep.text
        if text.rstrip().endswith("</suggested_answer>"):
            ep.stop_reason = "answer"
            break
        call = protocol.pending_tool_call(text)
        if call is None:
            if out.finish_reason == "length":
                continue                     # cut by the per-turn budget: keep generating
            ep.stop_reason = "end of generation without an answer"
            break
        t0 = time.perf_counter()
        if isinstance(call, protocol.ToolCallError):
            body, ok = protocol.render_error(call.tag, call.reason), False
        else:
            try:
                body, ok = await tools.run(call, context=text)
            except Exception as err:          # a tool outage becomes an error observation, never fake content
                body, ok = protocol.render_error(type(call).__name__, f"tool failed: {err}"), False
        ep.timings["tools"] += time.perf_counter() - t0
        ep.tool_errors += not ok
        if limits.cut_observation is not None:
            body = limits.cut_observation(body)
        ep.pieces.append(("env", protocol.observation(body)))
    else:
        ep.stop_reason = "turn limit"
    return ep


def trajectory_record(ep: Episode, policy_name: str) -> dict:
    text = ep.text
    return {"id": ep.id, "question": ep.question,
            "messages": [{"role": "system", "content": ep.system}, {"role": "user", "content": ep.question},
                         {"role": "assistant", "content": text}],
            "report": protocol.extract_report(text) or "",
            "meta": {"policy": policy_name, "tool_calls": protocol.count_tool_calls(text), "turns": ep.turns,
                     "stop_reason": ep.stop_reason, "tool_errors": ep.tool_errors,
                     "tokens": {"generated": ep.generated_tokens},
                     "timings": {k: round(v, 3) for k, v in ep.timings.items()}}}


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a broken line is an error naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object")
            rows.append(row)
    return rows


def read_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        prompt = row.get("prompt", row.get("question"))
        if not isinstance(prompt, str) or not prompt.strip() or "id" not in row:
            raise ValueError(f"{path} row {n}: needs 'id' and a non-empty 'prompt' (or 'question')")
        rows.append({**row, "id": str(row["id"]), "prompt": prompt})
    return rows[:limit] if limit else rows


async def run_questions(questions: list[dict], policy: Policy, tools: ToolRunner, *,
                        limits: Limits = Limits(), concurrency: int = 4, system: str | None = None) -> list[Episode]:
    system = system if system is not None else protocol.system_prompt()
    gate = asyncio.Semaphore(concurrency)

    async def one(q):
        async with gate:
            ep = Episode(q["id"], q["prompt"], system)
            try:
                return await run_episode(ep, policy, tools, limits)
            except Exception as err:          # a dead endpoint ends this episode, named in its record
                ep.stop_reason = f"policy error: {type(err).__name__}: {err}"
                return ep

    return list(await asyncio.gather(*(one(q) for q in questions)))


# ----------------------------------------------------------------------------------------------- scores
async def score_episodes(episodes: list[Episode], questions: list[dict], judge=None) -> dict:
    """Local rewards, the synth heuristic judge (if given) and KPR (if the rows carry key points)."""
    from experiments.eval.kpr import LexicalKeyPoints, kpr_report

    by_id = {q["id"]: q for q in questions}
    lexical = LexicalKeyPoints()
    rows = []
    for ep in episodes:
        text, report = ep.text, protocol.extract_report(ep.text) or ""
        row = {"id": ep.id, "r_format": protocol.format_reward(text), "r_tool": protocol.tool_reward(text),
               "tool_calls": protocol.count_tool_calls(text), "turns": ep.turns, "stop_reason": ep.stop_reason,
               "has_report": bool(report.strip())}
        if judge is not None:
            verdict = await judge(ep.question, report, text)
            row["judge"] = verdict
        points = [k["text"] if isinstance(k, dict) else k for k in by_id[ep.id].get("key_points", [])]
        if points:
            row.update({k: v for k, v in (await kpr_report(report, points, lexical)).items() if k != "labels"})
        rows.append(row)
    return {"questions": rows, "summary": summarize_scores(rows)}


def summarize_scores(rows: list[dict]) -> dict:
    n = len(rows) or 1
    out = {"questions": len(rows), "with_report": sum(r["has_report"] for r in rows),
           "r_format": sum(r["r_format"] for r in rows) / n, "r_tool": sum(r["r_tool"] for r in rows) / n,
           "tool_calls": sum(sum(r["tool_calls"].values()) for r in rows) / n}
    judged = [r["judge"] for r in rows if isinstance(r.get("judge"), dict) and not r["judge"].get("abstained")]
    out["judge_abstained"] = sum(1 for r in rows if isinstance(r.get("judge"), dict)
                                 and r["judge"].get("abstained"))
    out["judge_overall"] = 100 * sum(j["overall"] for j in judged) / len(judged) if judged else None
    if any("kpr" in r for r in rows):
        out["kpr"] = 100 * sum(r.get("kpr", 0.0) for r in rows) / n
        out["kpc"] = 100 * sum(r.get("kpc", 0.0) for r in rows) / n
    return out


def write_outputs(out_dir: Path, episodes: list[Episode], questions: list[dict], policy_name: str,
                  scores: dict | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {q["id"]: q for q in questions}
    with open(out_dir / "output.jsonl", "w", encoding="utf-8") as f:
        for ep in episodes:
            row = {"id": by_id[ep.id].get("id"), "prompt": ep.question,
                   "article": protocol.extract_report(ep.text) or ""}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(out_dir / "trajectories.jsonl", "w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(json.dumps(trajectory_record(ep, policy_name), ensure_ascii=False) + "\n")
    if scores is not None:
        (out_dir / "scores.json").write_text(json.dumps(scores, indent=1, ensure_ascii=False))


# ------------------------------------------------------------------------------------------------- CLI
def load_tokenizer(spec: str):
    """The tokenizer of an HF directory, or of the embedded GGUF for "gguf:embedded"."""
    from oresearcher.model import Tokenizer, load_gguf

    return load_gguf()[1] if spec == "gguf:embedded" else Tokenizer.from_dir(spec)


def make_template(spec: str | None):
    """A function (system, question) -> prompt text ending in the assistant generation prompt."""
    if spec is None:
        return None
    tok = load_tokenizer(spec)

    def template(system: str, question: str) -> str:
        return tok.apply_chat_template([{"role": "system", "content": system},
                                        {"role": "user", "content": question}], add_generation_prompt=True)
    return template


def load_synth_config(spec: str | None, cache_dir: str | None = None):
    """A synth config: "configs/synth.py[:preset]" (read by synth's own loader, `synth.config.load_config`), or
    None for the embedded tools (local BM25 search, local corpus pages). `cache_dir` overrides the tools' cache
    directory."""
    if spec is None:
        cfg = {"tools": {"search": {"backend": "local"}, "crawl": {"backend": "local"}}}
    else:
        from synth.config import load_config

        cfg = load_config(spec)
    if cache_dir:
        tools = cfg["tools"] if "tools" in cfg else cfg
        tools["cache_dir"] = cache_dir
    return cfg


def make_tools(spec: str, cfg) -> ToolRunner:
    if spec.startswith(("http://", "https://")):
        return HttpTools(spec)
    if spec != "local":
        raise ValueError(f"--tools {spec!r}: use 'local' or the synth service URL (http://host:port)")
    from synth.tools import Tools

    return LocalTools(Tools.from_config(cfg))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a policy on questions with the protocol loop.")
    ap.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--questions", required=True, help="JSONL {id, prompt}")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--api", choices=("chat", "completions"), default="chat")
    ap.add_argument("--tokenizer", help="chat template source for --api completions: HF dir or gguf:embedded")
    ap.add_argument("--tools", default="local", help="'local' (synth Tools in process) or the synth service URL")
    ap.add_argument("--synth-config", help="synth config file[:preset] for the tools and judge "
                    "(default: the embedded tools: local search and pages)")
    ap.add_argument("--cache-dir", help="tool cache directory (default: the config's, else ~/.cache/oresearcher)")
    ap.add_argument("--max-turns", type=int, default=25)
    ap.add_argument("--max-tokens-per-turn", type=int, default=4096)
    ap.add_argument("--max-total-tokens", type=int, default=65536)
    ap.add_argument("--max-observation-tokens", type=int, default=0,
                    help="cut each observation to this many tokens of --tokenizer as RL rollouts cut them "
                    "(rollout.max_observation_tokens; 0 = whole)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--limit", type=int, help="only the first N questions")
    ap.add_argument("--judge", choices=("heuristic", "none"), default="heuristic",
                    help="score reports with synth's judge: the heuristic judge (an offline stand-in for the LLM "
                    "judge) in process, or the service's /v1/judge when --tools is a URL")
    ap.add_argument("--api-key-env", default="", help="name of the environment variable holding the key")
    ap.add_argument("--max-retries", type=int, default=6,
                    help="retries of a policy request on timeouts, connection errors, 5xx and 429")
    args = ap.parse_args(argv)

    questions = read_questions(args.questions, args.limit)
    policy = EndpointPolicy(args.endpoint, args.model, api=args.api, template=make_template(args.tokenizer),
                            temperature=args.temperature, api_key_env=args.api_key_env,
                            max_retries=args.max_retries)
    synth_cfg = load_synth_config(args.synth_config, args.cache_dir)
    tools = make_tools(args.tools, synth_cfg)
    cut = None
    if args.max_observation_tokens:
        if not args.tokenizer:
            ap.error("--max-observation-tokens counts tokens of --tokenizer: give --tokenizer (HF dir or "
                     "gguf:embedded)")
        from oresearcher.rl.rollout import truncate_observation
        tok = load_tokenizer(args.tokenizer)
        cut = lambda body: truncate_observation(tok, body, args.max_observation_tokens)
    limits = Limits(args.max_turns, args.max_tokens_per_turn, args.max_total_tokens, cut)
    t0 = time.perf_counter()
    judge = make_judge(tools) if args.judge == "heuristic" else None

    async def run_and_score():   # one event loop: the HTTP clients' connection pools belong to it
        episodes = await run_questions(questions, policy, tools, limits=limits, concurrency=args.concurrency)
        return episodes, await score_episodes(episodes, questions, judge)

    episodes, scores = asyncio.run(run_and_score())
    write_outputs(args.out, episodes, questions, policy.name, scores)
    failed = [ep for ep in episodes if ep.stop_reason.startswith("policy error")]
    if failed:
        print(f"run_agent: the policy endpoint failed for {len(failed)} of {len(episodes)} questions (first: "
              f"{failed[0].id}: {failed[0].stop_reason[:300]})", file=sys.stderr, flush=True)
    if failed and not any((protocol.extract_report(ep.text) or "").strip() for ep in episodes):
        print(f"run_agent: no question produced a report because the policy endpoint failed; check --endpoint "
              f"{args.endpoint} and --model {args.model} (GET {args.endpoint.rstrip('/')}/models lists the "
              "served names)", file=sys.stderr, flush=True)
        return 1
    s = scores["summary"]
    print(f"{len(episodes)} questions in {time.perf_counter() - t0:.1f}s -> {args.out}: "
          f"{s['with_report']} reports, R_format {s['r_format']:.2f}, R_tool {s['r_tool']:.2f}, "
          f"tool calls/question {s['tool_calls']:.1f}"
          + (f", KPR {s['kpr']:.1f}" if "kpr" in s else "")
          + (f", judge {s['judge_overall']:.1f}" if s.get("judge_overall") is not None else ""))
    return 0


def make_judge(tools: ToolRunner):
    """The report judge as an async (question, report, trajectory) -> verdict dict: synth's heuristic judge
    in process (over the same Tools and cache), or the synth service's POST /v1/judge."""
    if isinstance(tools, HttpTools):
        async def remote(question: str, report: str, trajectory: str) -> dict:
            resp = await tools.client.post(f"{tools.base_url}/v1/judge", json={
                "question": question, "report": report, "trajectory": trajectory})
            if resp.status_code != 200:
                return {"abstained": True, "reason": f"judge service answered HTTP {resp.status_code}"}
            return resp.json()
        return remote
    from synth.judge import HeuristicJudge

    judge = HeuristicJudge(tools.tools)

    async def local(question: str, report: str, trajectory: str) -> dict:
        return (await judge.score(question, report, trajectory=trajectory)).to_json()
    return local


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    sys.exit(main())

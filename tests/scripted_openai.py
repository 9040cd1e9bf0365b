"""Real local HTTP servers for tests: a scripted OpenAI-compatible chat server with fault injection, and a
generic runner for any ASGI app (fake search APIs, redirectors, canaries).

Everything listens on 127.0.0.1 on a free port, in a background thread with its own event loop, so the code
under test talks real HTTP through its real client.

ScriptedOpenAI
--------------
    from scripted_openai import Faults, ScriptedOpenAI   # tests/ is on sys.path under pytest;
                                                         # elsewhere: from tests.scripted_openai import ...

    def responder(request: dict) -> str:          # the parsed /v1/chat/completions JSON body
        return "answer to " + request["messages"][-1]["content"]

    faults = Faults(error_500=0.1, error_429=0.1, hang=0.05, garbage=0.05, seed=0)
    with ScriptedOpenAI(responder, faults=faults, latency=0.0, model="scripted") as server:
        server.base_url        # "http://127.0.0.1:PORT/v1"  (give this to LLMClient / Endpoint)
        ...
        server.stats           # Counter: "ok", "error_500", "error_429", "hang", "garbage", "empty_choices"
        server.requests        # list of every request body received (dicts), in arrival order
        server.headers         # list of the Authorization header of each request ("" when absent)

responder(request) may return:
  * a str: the assistant message content (cut at the first of the request's `stop` strings, as servers do);
  * a dict: sent verbatim as the JSON response body (to script odd but well-formed answers);
  * an awaitable of either (async responders);
  * a list of str instead of a callable: answers given in order, the last one repeated.
Without a responder the server answers "scripted answer: <last user message, first 80 chars>".

Faults are drawn per request from random.Random(seed) in arrival order, as fractions of all requests (with
exact=True they are dealt from shuffled decks of 100 outcomes, so every 100 requests hold exactly those shares):
  error_500     -> HTTP 500 with an OpenAI-style error body
  error_429     -> HTTP 429 with header `Retry-After: <retry_after>` (seconds)
  hang          -> no answer for `hang_seconds` (set the client timeout below it), then a normal answer
  garbage       -> HTTP 200 whose body is not JSON
  empty_choices -> HTTP 200 JSON with "choices": []
`latency` (seconds) is added before every answer, faulty or not. usage counts words (prompt: all message
contents; completion: the answer). GET /v1/models lists `model`.

A reasoning model (OpenAI's o-series / GPT-5 behaviour): ScriptedOpenAI(..., reasoning=True) answers HTTP 400
in OpenAI's error shape (`unsupported_parameter` naming `max_tokens`, `stop` or `top_p`; `unsupported_value`
for a `temperature` other than 1) to any request carrying one of them, counted in stats as "refused_<param>",
and adds `reasoning_content` to each answer with its reasoning tokens in usage.completion_tokens_details (and
in completion_tokens, as OpenAI counts them). `refuse=(...)` picks the refused parameters instead.

LocalServer
-----------
    with LocalServer(fastapi_app) as server:
        server.url   # "http://127.0.0.1:PORT";  server.port
"""
from __future__ import annotations

import functools


def role_turns(messages: list[dict]) -> tuple[str, list[dict]]:
    """(role, the chat after the role's head) of a synth teacher request: the head is the role's system prompt
    and its worked example turns (synth/prompts/ROLE.shots.json), which a scripted teacher must skip.
    role is "planner", "researcher", "summarizer", or "" for any other chat (then only the system is skipped)."""
    system = messages[0].get("content", "") if messages and messages[0].get("role") == "system" else None
    for role, (prompt, length) in _role_heads().items():
        if system == prompt:
            return role, messages[length:]
    return "", messages[1:] if system is not None else messages


@functools.lru_cache(maxsize=1)
def _role_heads() -> dict[str, tuple[str, int]]:
    """role -> (its system prompt, the number of messages in its head), read once per process: a scripted
    server answers hundreds of requests a second and must not reread the prompt files for each."""
    from synth.teachers.openai import role_prompt
    heads = {role: role_prompt(role) for role in ("planner", "researcher", "summarizer")}
    return {role: (head[0]["content"], len(head)) for role, head in heads.items()}


import asyncio
import collections
import dataclasses
import inspect
import json
import random
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from experiments.loopback import LocalServer  # noqa: F401  (re-exported: the tests import it from here)


@dataclasses.dataclass
class Faults:
    """Fractions of requests answered with each fault (see the module docstring); they must sum to <= 1."""

    error_500: float = 0.0
    error_429: float = 0.0
    hang: float = 0.0
    garbage: float = 0.0
    empty_choices: float = 0.0
    retry_after: float = 0.05
    hang_seconds: float = 30.0
    seed: int = 0
    exact: bool = False   # True: outcomes dealt from shuffled decks of 100 holding exactly the fractions
    _deck: list = dataclasses.field(default_factory=list, repr=False, compare=False)

    KINDS = ("error_500", "error_429", "hang", "garbage", "empty_choices")

    def __post_init__(self):
        total = sum(getattr(self, k) for k in self.KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault fractions sum to {total:.3f} > 1")

    def draw(self, rng: random.Random) -> str:
        """The outcome of one request: a fault kind or "ok"."""
        if self.exact:
            if not self._deck:
                self._deck = [k for k in self.KINDS for _ in range(round(100 * getattr(self, k)))]
                self._deck += ["ok"] * (100 - len(self._deck))
                rng.shuffle(self._deck)
            return self._deck.pop()
        u, cumulative = rng.random(), 0.0
        for kind in self.KINDS:
            cumulative += getattr(self, kind)
            if u < cumulative:
                return kind
        return "ok"


def _words(text: str) -> int:
    return len(text.split())


REASONING = "The user wants an answer; I think it through before writing it."
REASONING_REFUSALS = ("max_tokens", "stop", "top_p", "temperature")


def _refusal(body: dict, refuse: tuple[str, ...]) -> JSONResponse | None:
    """The 400 a reasoning model gives for the first refused field of `body` (None when it has none)."""
    for param in refuse:
        if param not in body:
            continue
        if param == "temperature":
            if body[param] == 1:
                continue
            message = (f"Unsupported value: 'temperature' does not support {body[param]} with this model. "
                       "Only the default (1) value is supported.")
            code = "unsupported_value"
        else:
            message = f"Unsupported parameter: '{param}' is not supported with this model."
            if param == "max_tokens":
                message += " Use 'max_completion_tokens' instead."
            code = "unsupported_parameter"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status_code=400)
    return None


class ScriptedOpenAI(LocalServer):
    """An OpenAI-compatible chat server answering from a script, with seeded fault injection."""

    def __init__(self, responder: Callable[[dict], Any] | list[str] | None = None, *,
                 faults: Faults | None = None, latency: float = 0.0, model: str = "scripted-model",
                 reasoning: bool = False, refuse: tuple[str, ...] | None = None):
        self.responder = responder
        self.reasoning = reasoning
        self.refuse = tuple(refuse) if refuse is not None else (REASONING_REFUSALS if reasoning else ())
        self.faults = faults or Faults()
        self.latency = latency
        self.model = model
        self.stats: collections.Counter = collections.Counter()
        self.requests: list[dict] = []
        self.headers: list[str] = []
        self._rng = random.Random(self.faults.seed)
        self._script_index = 0
        super().__init__(self._build_app())

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def _answer(self, request: dict) -> Any:
        if self.responder is None:
            last = next((m.get("content", "") for m in reversed(request.get("messages", []))
                         if m.get("role") == "user"), "")
            return f"scripted answer: {str(last)[:80]}"
        if isinstance(self.responder, list):
            answer = self.responder[min(self._script_index, len(self.responder) - 1)]
            self._script_index += 1
            return answer
        answer = self.responder(request)
        return await answer if inspect.isawaitable(answer) else answer

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.headers.append(request.headers.get("authorization", ""))
            refused = _refusal(body, self.refuse)
            if refused is not None:
                self.stats["refused_" + json.loads(refused.body)["error"]["param"]] += 1
                return refused
            outcome = self.faults.draw(self._rng)
            self.stats[outcome] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            if outcome == "error_500":
                return JSONResponse({"error": {"message": "scripted internal error", "type": "server_error"}},
                                    status_code=500)
            if outcome == "error_429":
                return JSONResponse({"error": {"message": "scripted rate limit", "type": "rate_limit"}},
                                    status_code=429, headers={"Retry-After": f"{self.faults.retry_after:g}"})
            if outcome == "garbage":
                return PlainTextResponse('{"choices": [{"message": {"content": "trunc', status_code=200,
                                         media_type="application/json")
            if outcome == "empty_choices":
                return {"id": "scripted", "object": "chat.completion", "model": self.model, "choices": []}
            if outcome == "hang":
                await asyncio.sleep(self.faults.hang_seconds)
            answer = await self._answer(body)
            if isinstance(answer, dict):
                return answer
            text = str(answer)
            for stop in body.get("stop") or []:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            prompt_words = sum(_words(str(m.get("content", ""))) for m in body.get("messages", []))
            message = {"role": "assistant", "content": text}
            usage = {"prompt_tokens": prompt_words, "completion_tokens": _words(text),
                     "total_tokens": prompt_words + _words(text)}
            if self.reasoning:
                message["reasoning_content"] = REASONING
                thought = _words(REASONING)
                usage.update(completion_tokens=usage["completion_tokens"] + thought,
                             total_tokens=usage["total_tokens"] + thought,
                             completion_tokens_details={"reasoning_tokens": thought})
            # A JSONResponse skips FastAPI's generic encoder: the benchmark measures the client, not this server.
            return JSONResponse({"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                                 "created": int(time.time()), "model": body.get("model") or self.model,
                                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                 "usage": usage})

        return app

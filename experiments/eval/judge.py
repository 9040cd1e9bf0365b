"""The evaluation judge: an OpenAI-compatible LLM that must answer in JSON.

RACE, FACT and KPR all ask the judge for a JSON object or list, then check its shape. A judge can fail in
two ways: the endpoint fails (the LLM client already retries timeouts, 5xx and 429 with backoff), or it
answers with text we cannot read (no JSON, wrong shape, a score out of range). Both are retried here up to
`max_attempts`; after that the caller gets `JudgeFailure` and drops the item. A judge failure is never
turned into a score: a dropped task is counted, never scored 0.
"""
from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Chat = Callable[[list[dict]], Awaitable[str]]


class JudgeError(ValueError):
    """The judge's answer was read but has the wrong shape (the message says what is wrong)."""


class JudgeFailure(RuntimeError):
    """The judge gave no usable answer after every attempt; the item is dropped and counted."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The JSON value in a judge's answer: a fenced block, or the outermost {...} / [...] span.

    Raises JudgeError when there is none (judges often wrap JSON in prose or markdown fences).
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeError("empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        cand = cand.strip()
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
        # try the bracket kind that opens first, so a list of objects is not read as its first object
        kinds = sorted((("{", "}"), ("[", "]")), key=lambda k: (cand.find(k[0]) < 0, cand.find(k[0])))
        for open_, close in kinds:
            start, end = cand.find(open_), cand.rfind(close)
            if 0 <= start < end:
                try:
                    return json.loads(cand[start:end + 1])
                except json.JSONDecodeError:
                    continue
    raise JudgeError(f"no JSON in the answer (starts {text[:80]!r})")


@dataclass
class JudgeStats:
    """Counts for the closing report: calls made, answers rejected (and why), items given up on."""
    calls: int = 0
    rejected: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str) -> None:
        key = reason.split(":")[0][:60]
        self.reasons[key] = self.reasons.get(key, 0) + 1


class Judge:
    """Asks an LLM for JSON and validates it; `name` says which judge scored (e.g. "llm:gpt-4.1")."""

    def __init__(self, chat: Chat, *, name: str, max_attempts: int = 3, system: str | None = None):
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts}: must be >= 1")
        self._chat = chat
        self.name = name
        self.max_attempts = max_attempts
        self.system = system or "You are a careful, strict evaluator. Answer with JSON only."
        self.stats = JudgeStats()

    @classmethod
    def from_endpoint(cls, base_url: str, model: str, *, api_key_env: str = "", max_attempts: int = 3,
                      temperature: float = 0.0, max_tokens: int = 4096, timeout: float = 300.0,
                      max_retries: int = 6, backoff: float = 1.0) -> Judge:
        """A judge behind any OpenAI-compatible endpoint, through synth's LLM client (which retries timeouts,
        5xx and 429 with backoff); `api_key_env` names the environment variable holding the key, if any."""
        from synth.llm import Endpoint, LLMClient

        client = LLMClient([Endpoint(base_url, model, api_key_env=api_key_env)], timeout=timeout,
                           max_retries=max_retries, backoff=backoff)

        async def chat(messages: list[dict]) -> str:
            return (await client.chat(messages, temperature=temperature, max_tokens=max_tokens)).text

        judge = cls(chat, name=f"llm:{model}", max_attempts=max_attempts)
        judge.client = client
        return judge

    async def ask(self, prompt: str, parse: Callable[[Any], T], *, what: str) -> T:
        """Send `prompt`, read JSON, return `parse(json)`; `parse` raises JudgeError on a wrong shape.

        Raises JudgeFailure (naming `what` and the last reason) after `max_attempts` unusable answers.
        """
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        reason = "no attempt made"
        for _ in range(self.max_attempts):
            self.stats.calls += 1
            try:
                text = await self._chat(messages)
            except Exception as err:  # the endpoint failed after the client's own retries
                reason = f"endpoint error: {type(err).__name__}: {err}"
            else:
                try:
                    return parse(extract_json(text))
                except JudgeError as err:
                    reason = f"unusable answer: {err}"
            self.stats.rejected += 1
            self.stats.note(reason)
        self.stats.failures += 1
        raise JudgeFailure(f"{what}: judge failed {self.max_attempts} time(s); last: {reason}")

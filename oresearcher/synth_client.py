"""How this project's code calls the synth service: with its bearer token when one is set.

    headers = synth_client.auth_headers()           # {"Authorization": "Bearer <$SYNTH_TOKEN>"} or {}
    async with synth_client.async_client() as c:    # an httpx.AsyncClient that sends it on every request
        await c.post(f"{url}/v1/tools/web_search", json=...)

The service refuses its /v1 routes without the token when $SYNTH_TOKEN is set on its side (`service.token_env`).
Every client here (RL tool calls and judge calls, experiments.run_agent, the evaluations, the SFT data stream)
reads the same variable, so a token set once in the environment reaches both ends; without this a protected
service turns every tool call into an error observation and every judge call into an abstention, silently.
"""
from __future__ import annotations

import os

import httpx

TOKEN_ENV = "SYNTH_TOKEN"


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The Authorization header for `token` (default: $SYNTH_TOKEN); empty when there is no token."""
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def crawl_context(text: str, max_chars: int = 100_000) -> str:
    """What a crawl_page call sends as `context` when it names no goal: the trajectory after its last observation
    (the think/plan the service takes the goal from), at most `max_chars` of it (the service's field limit is
    200,000 characters)."""
    cut = text.rfind("</observation>")
    return text[cut:][-max_chars:] if cut >= 0 else text[-max_chars:]


def async_client(token: str | None = None, **kwargs) -> httpx.AsyncClient:
    """An httpx.AsyncClient carrying `auth_headers(token)`; kwargs go to httpx (timeout, ...)."""
    headers = {**kwargs.pop("headers", {}), **auth_headers(token)}
    return httpx.AsyncClient(headers=headers, **kwargs)

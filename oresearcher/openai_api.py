"""The OpenAI request and response forms of `oresearcher.serve`, apart from generation.

    app = FastAPI(); openai_api.install_error_handlers(app)
    @app.post("/v1/chat/completions")
    def chat(req: openai_api.ChatRequest):
        openai_api.check_model(req.model, ["my-model"])
        messages = req.chat_messages()                       # [{"role", "content": str}], parts joined
        ...generate...
        return openai_api.chat_response(req, "my-model", prompt_tokens, [(text, finish_reason, tokens), ...])

Validation follows OpenAI's API: max_tokens / max_completion_tokens >= 1, n in 1..MAX_N, seed a 64-bit integer,
temperature in [0, 2], top_p in (0, 1], every message with a known role and text content (a string or a list of
{"type": "text", "text": ...} parts); a bad request is answered 400 with OpenAI's error body naming the
parameter ({"error": {"message", "type", "param", "code"}}), an unknown model 404 (`model_not_found`). `model`
may be left out (this server has one model). `stream: true` answers server-sent events (`data: {chunk}` lines,
then `data: [DONE]`) in OpenAI's chunk forms; the text of each choice comes as one delta once the batch has
decoded it, and `stream_options.include_usage` adds the usage chunk.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

MAX_N = 64                       # choices per request: each is a row of the decode batch
INT64 = 2 ** 63                  # OpenAI's seed is a signed 64-bit integer


class APIError(Exception):
    """An error answered in OpenAI's form."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def _param(loc: tuple) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's body; request validation answers 400 (as OpenAI does), not FastAPI's 422."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_response(400, f"Invalid request: {param or 'body'}: {msg}", param or None)


# ------------------------------------------------------------------------------------------------ requests
class _Request(BaseModel):
    model: str = ""
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)                 # extension (vLLM's)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """OpenAI treats an explicit null like an absent field (clients send `"temperature": null`)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content):
        if isinstance(content, list):
            for i, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"content[{i}]: type {part.get('type')!r} is not supported: this model reads "
                                     "text only ({'type': 'text', 'text': '...'} parts)")
        return content

    @model_validator(mode="after")
    def _content_present(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True       # extensions, as in vLLM: continue_final_message=true with
    continue_final_message: bool = False     # add_generation_prompt=false continues the last (assistant) message

    def chat_messages(self) -> list[dict]:
        """The messages as the chat template takes them: text content; `developer` is OpenAI's newer name for
        the system role."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)


def check_model(requested: str, served: list[str]) -> None:
    """404 like OpenAI for a model this server does not serve (an empty name means the served one)."""
    if requested and requested not in served:
        raise APIError(404, f"The model `{requested}` does not exist; this server serves {served} "
                            "(GET /v1/models)", param="model", code="model_not_found")


# ----------------------------------------------------------------------------------------------- responses
Result = tuple[str, str, int]        # (text, finish reason, completion tokens)


def _usage(prompt_tokens: int, results: list[Result]) -> dict:
    used = sum(r[2] for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used}


def chat_response(req: ChatRequest, model: str, prompt_tokens: int, results: list[Result]):
    """The chat.completion body, or its server-sent-event stream when req.stream."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if not req.stream:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason, _) in enumerate(results)]
        return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(prompt_tokens, results)}
    chunk = {**head, "object": "chat.completion.chunk"}
    if req.include_usage():
        chunk["usage"] = None

    def choice(i, delta, reason=None):
        return {**chunk, "choices": [{"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}]}
    events = []
    for i, (text, reason, _) in enumerate(results):
        events += [choice(i, {"role": "assistant", "content": ""}), choice(i, {"content": text}),
                   choice(i, {}, reason)]
    if req.include_usage():
        events.append({**chunk, "choices": [], "usage": _usage(prompt_tokens, results)})
    return event_stream(events)


def completion_response(req: CompletionRequest, model: str, prompt_tokens: int, results: list[Result]):
    """The text_completion body, or its server-sent-event stream when req.stream."""
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model}
    if not req.stream:
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason, _) in enumerate(results)]
        return {**head, "choices": choices, "usage": _usage(prompt_tokens, results)}
    chunk = {**head, "usage": None} if req.include_usage() else head

    def choice(i, text, reason=None):
        return {**chunk, "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}]}
    events = []
    for i, (text, reason, _) in enumerate(results):
        events += [choice(i, text), choice(i, "", reason)]
    if req.include_usage():
        events.append({**chunk, "choices": [], "usage": _usage(prompt_tokens, results)})
    return event_stream(events)


def event_stream(events: Iterable[dict]) -> StreamingResponse:
    """Server-sent events: one `data: {json}` per event, then `data: [DONE]`."""
    def lines():
        for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

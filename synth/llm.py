"""An async client for a list of OpenAI-compatible chat endpoints: concurrency limits, retries, failover, accounting.

    client = LLMClient([Endpoint("https://api.example.com/v1", "model-a", api_key_env="EXAMPLE_API_KEY",
                                 max_concurrency=16, price_prompt=0.5, price_completion=1.5)],
                       timeout=120, max_retries=6, backoff=1.0)
    acct = Accounting()
    result = await client.chat([{"role": "user", "content": "hi"}], temperature=0.7, max_tokens=512,
                               accounting=acct)
    result.text, result.model, result.usage, result.retries; acct.to_dict()

Why each piece exists:
  * one asyncio semaphore per endpoint: a provider's rate limit is per endpoint, and 64 concurrent questions
    with 4 researchers each would otherwise open hundreds of requests at once;
  * retries with jittered exponential backoff on timeouts, connection errors, 5xx, 429 (Retry-After honoured,
    capped) and unusable answers (invalid JSON, no choices, no message): all are transient for a hosted model;
  * failover: every retry goes to the next endpoint in the list, so one dead provider costs one attempt, and a
    request starts on the endpoint with the most free slots; 400/401/403/404 are not retried on the endpoint
    that gave them (the request or key is wrong there) but the other endpoints are still tried;
  * accounting per job: calls, retries, failures, tokens and cost, which the workflow copies into `meta`;
  * API keys are read from environment variables at construction, sent only in the Authorization header, and
    never appear in reprs, logs or error messages (server error text is redacted before it is quoted);
  * reasoning models (OpenAI's o-series and GPT-5, and servers imitating them) refuse `max_tokens`, `stop`,
    `top_p` and any `temperature` but 1 with HTTP 400. The first 400 that names such a parameter teaches the
    client what that endpoint refuses (kept for the client's life, so only one request per endpoint pays for
    it): `max_tokens` becomes `max_completion_tokens` (and back, for a server that knows only the old name),
    sampling parameters are dropped (the model's defaults apply), and a refused `stop` is applied here: the
    answer is cut before the first stop string, as a server does. An endpoint's config can declare both up
    front (`token_param`, `drop_params`);
  * `reasoning_content` (DeepSeek, vLLM, ...; `reasoning` on others) is returned apart from the answer, and
    reasoning tokens are counted in the accounting and its cost.

Transport: httpx.AsyncClients per endpoint and event loop: keep-alive pools holding up to the endpoint's
max_concurrency connections, at most CONNECTIONS_PER_CLIENT per client; TLS verified against certifi's CA
bundle; proxies from the environment; HTTP/2 when the `h2` package is installed. Its errors map onto the retry
logic: timeouts and connection errors are retried on the next endpoint like a 5xx; a response body over
`max_response_bytes` is a failed attempt, never read whole. CPU per call is several times that of a bare
asyncio HTTP/1.1 exchange (experiments/bench/synth_transport_compare.py measures it); against endpoints that
take seconds per answer it is not what limits a job.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import importlib.util
import json
import logging
import os
import random
import re
import ssl
import time
from urllib.parse import urlsplit

import certifi
import httpx

log = logging.getLogger(__name__)

_ENCODE = json.JSONEncoder(ensure_ascii=False).encode   # = json.dumps(value, ensure_ascii=False)
_ENCODED_CONTENTS = 2048   # message contents whose JSON a client keeps (see LLMClient._request_body)
# Request fields a reasoning model may refuse and the client may drop: the model's defaults then apply.
DROPPABLE = frozenset({"temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                       "logit_bias", "n"})
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
_NAMED_PARAM = re.compile(r"(?:parameter|value|argument|field)s?:?\s*['\"`]?([a-z_]+)['\"`]?", re.IGNORECASE)
# What a server says when a field is refused outright (OpenAI, vLLM and pydantic-based servers' wordings).
_REFUSAL = re.compile(r"unsupported|not supported|does not support|unrecognized|unknown|not permitted|"
                      r"extra (?:inputs|fields)", re.IGNORECASE)
MAX_ADAPTATIONS = 8   # adaptations of one call (each drops or renames one field, so this bounds the loop)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is treated as "try another endpoint, then wait this long"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024   # a chat answer is kilobytes; more is a broken or hostile server
_HTTP2 = importlib.util.find_spec("h2") is not None   # httpx speaks HTTP/2 only with the optional h2 package
# httpcore's pool scans all its connections and queued requests at every request start and end, so its CPU per
# call grows with the pool's size: an endpoint's connections are spread over clients of at most this many.
CONNECTIONS_PER_CLIENT = 16


class LLMError(Exception):
    """Every attempt on every endpoint failed. `reason` says what happened on the last attempts."""

    def __init__(self, reason: str, attempts: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclasses.dataclass
class Endpoint:
    """One OpenAI-compatible server. base_url ends in /v1 (".../v1/chat/completions" is appended).

    api_key_env: NAME of the environment variable holding the key ("" for servers without auth);
    price_prompt / price_completion: cost in currency units per million tokens (0 when unknown); reasoning
    tokens are billed as completion tokens;
    token_param: the field carrying the token limit, "max_tokens" or "max_completion_tokens" ("auto": start
    with max_tokens, switch on the server's first 400 naming it);
    drop_params: request fields this endpoint refuses (a subset of DROPPABLE), never sent; a refused `stop` is
    applied by the client.
    """

    base_url: str
    model: str
    api_key_env: str = ""
    max_concurrency: int = 8
    price_prompt: float = 0.0
    price_completion: float = 0.0
    token_param: str = "auto"
    drop_params: tuple = ()

    def __post_init__(self):
        self.base_url = self.base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint base_url={self.base_url!r}: use an http:// or https:// URL "
                             "(e.g. https://api.openai.com/v1)")
        if self.token_param not in ("auto", *TOKEN_PARAMS):
            raise ValueError(f"endpoint {self.base_url}: token_param={self.token_param!r}; choose 'auto', "
                             "'max_tokens' or 'max_completion_tokens'")
        self.drop_params = tuple(self.drop_params)
        unknown = sorted(set(self.drop_params) - DROPPABLE)
        if unknown:
            raise ValueError(f"endpoint {self.base_url}: drop_params {unknown} cannot be dropped; "
                             f"choose among {sorted(DROPPABLE)}")
        if self.max_concurrency < 1:
            raise ValueError(f"endpoint {self.base_url}: max_concurrency must be >= 1, got {self.max_concurrency}")

    @classmethod
    def from_dict(cls, spec: dict) -> Endpoint:
        """From a config entry {"base_url", "model", "api_key_env"?, "max_concurrency"?, "price_*"?}."""
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise ValueError(f"LLM endpoint with keys {sorted(spec)}: missing {missing}; "
                             "each endpoint needs base_url and model")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - fields
        if unknown:
            raise ValueError(f"LLM endpoint {spec.get('base_url')}: unknown keys {sorted(unknown)}; "
                             f"allowed {sorted(fields)}")
        return cls(**dict(spec))


@dataclasses.dataclass
class Usage:
    """completion_tokens includes reasoning_tokens (OpenAI's convention: reasoning is billed as completion)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclasses.dataclass
class ChatResult:
    """text: the answer; reasoning: the model's reasoning_content ("" when it sends none); finish_reason as the
    server said ("stop" when the client cut the answer at a stop string)."""

    text: str
    model: str
    usage: Usage
    retries: int
    reasoning: str = ""
    finish_reason: str = ""


@dataclasses.dataclass
class Accounting:
    """Per-job totals. retries counts failed attempts that were retried; failures counts calls that gave up."""

    calls: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    adaptations: int = 0    # requests refused for a parameter and resent without it (see the module docstring)
    cost: float = 0.0
    by_model: dict = dataclasses.field(default_factory=dict)

    def record(self, endpoint: Endpoint, usage: Usage) -> None:
        self.calls += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.cost += (usage.prompt_tokens * endpoint.price_prompt
                      + usage.completion_tokens * endpoint.price_completion) / 1e6
        self.by_model[endpoint.model] = self.by_model.get(endpoint.model, 0) + 1

    def to_dict(self) -> dict:
        return {"calls": self.calls, "retries": self.retries, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "reasoning_tokens": self.reasoning_tokens, "adaptations": self.adaptations,
                "cost": round(self.cost, 6), "by_model": dict(self.by_model)}


class _Attempt(Exception):
    """One failed attempt. retry_after: the server's requested wait (s); fatal: do not retry this endpoint."""

    def __init__(self, reason: str, *, retry_after: float | None = None, fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.fatal = fatal


class _Refused(_Attempt):
    """HTTP 400 naming a request field (`param`) the endpoint does not accept."""

    def __init__(self, reason: str, param: str):
        super().__init__(reason, fatal=True)
        self.param = param


def _refused_param(raw: bytes) -> str:
    """The request field a 400 body says the model does not accept: OpenAI's error.param, else the first quoted
    name after "parameter" or "value" in the message; "" when the 400 is about something else (a value out of
    range, a prompt too long), which dropping a field would not fix."""
    try:
        error = json.loads(raw).get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = f"{error.get('code') or ''} {error.get('message') or ''}"
        param = error.get("param") if isinstance(error.get("param"), str) else ""
    else:
        message, param = raw[:500].decode("utf-8", "replace"), ""
    if not _REFUSAL.search(message):
        return ""
    if param:
        return param
    match = _NAMED_PARAM.search(message)
    return match.group(1) if match else ""


def cut_at_stop(text: str, stop) -> tuple[str, bool]:
    """(text before the first stop string, whether one occurred): what a server honouring `stop` returns."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _count(value) -> int:
    """A token count from a usage field; servers that omit or garble it count as 0 rather than failing."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


class LLMClient:
    """Chat completions over `endpoints` (see the module docstring).

    timeout: seconds per attempt (connect + send + read, all together); max_retries: attempts after the first,
    across endpoints; backoff: base delay in seconds, doubled per retry (capped at backoff_max) with full jitter
    in [0.5, 1.0]×; max_response_bytes: the largest response body read (decoded), larger ones fail the attempt.
    """

    def __init__(self, endpoints: list[Endpoint | dict], *, timeout: float = 120.0, max_retries: int = 6,
                 backoff: float = 1.0, backoff_max: float = 30.0, seed: int | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        if not endpoints:
            raise ValueError("LLMClient needs at least one endpoint (base_url + model)")
        self.endpoints = [e if isinstance(e, Endpoint) else Endpoint.from_dict(e) for e in endpoints]
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_response_bytes = max_response_bytes
        self._keys = [os.environ.get(e.api_key_env, "") if e.api_key_env else "" for e in self.endpoints]
        for endpoint, key in zip(self.endpoints, self._keys):
            if endpoint.api_key_env and not key:
                log.warning("LLM endpoint %s: environment variable %s is empty; sending no key",
                            endpoint.base_url, endpoint.api_key_env)
        # What each endpoint refuses, declared or learned from its 400s (module docstring).
        self._refused = [set(e.drop_params) for e in self.endpoints]
        self._token_param = ["max_tokens" if e.token_param == "auto" else e.token_param for e in self.endpoints]
        self._semaphores = [asyncio.Semaphore(e.max_concurrency) for e in self.endpoints]
        self._in_flight = [0] * len(self.endpoints)
        self._random = random.Random(seed)
        self._encoded: dict[str, str] = {}   # message content -> its JSON string (_request_body)
        self._urls = [f"{e.base_url}/chat/completions" for e in self.endpoints]
        # One SSL context for every connection: building one loads the CA bundle (milliseconds of CPU).
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self._clients: list[list[list]] = []   # per endpoint: [client, requests in flight] (_shard)
        self._loop = None   # the event loop self._clients belong to (_client)

    @classmethod
    def from_config(cls, cfg) -> LLMClient:
        """From a config section {endpoints: [{base_url, model, api_key_env?, max_concurrency?, price_*?,
        token_param?, drop_params?}, ...],
        timeout?, max_retries?, backoff?, backoff_max?} (dict or ml_collections ConfigDict)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        endpoints = [dict(e) for e in (get("endpoints", None) or [])]
        if not endpoints:
            raise ValueError("LLM config has no endpoints: set endpoints=[{'base_url': ..., 'model': ...}]")
        return cls(endpoints, timeout=float(get("timeout", 120.0)), max_retries=int(get("max_retries", 6)),
                   backoff=float(get("backoff", 1.0)), backoff_max=float(get("backoff_max", 30.0)))

    @property
    def name(self) -> str:
        """Model names of the endpoints ("a" or "a,b"): names the summariser in cache keys and judge labels."""
        return ",".join(dict.fromkeys(e.model for e in self.endpoints))

    def __repr__(self) -> str:
        return f"LLMClient({[f'{e.base_url} [{e.model}]' for e in self.endpoints]}, keys=<redacted>)"

    def _redact(self, text: str) -> str:
        for key in self._keys:
            if key:
                text = text.replace(key, "<redacted>")
        return text

    def _first_endpoint(self) -> int:
        """The endpoint with the most free slots (ties: list order), so load spreads before queues form."""
        free = [e.max_concurrency - n for e, n in zip(self.endpoints, self._in_flight)]
        return max(range(len(free)), key=lambda i: (free[i], -i))

    async def chat(self, messages: list[dict], *, temperature: float = 0.7, max_tokens: int = 1024,
                   stop: list[str] | None = None, seed: int | None = None, extra: dict | None = None,
                   top_p: float | None = None, accounting: Accounting | None = None) -> ChatResult:
        """One chat completion. Raises LLMError only when every attempt (1 + max_retries) failed.

        seed: OpenAI's `seed` field (sent only when given): a server that honours it, as oresearcher.serve
        does, samples the same answer for the same request, so a sampled job is reproducible. extra: further
        request fields a server understands (e.g. vLLM's continue_final_message), sent as given. top_p: sent
        only when given."""
        fields = {"temperature": temperature, "stop": list(stop) if stop else None, "seed": seed, "top_p": top_p}
        index = self._first_endpoint()
        fatal: set[int] = set()
        reasons: list[str] = []
        attempts = adaptations = 0
        while attempts <= self.max_retries and len(fatal) < len(self.endpoints):
            while index in fatal:
                index = (index + 1) % len(self.endpoints)
            endpoint = self.endpoints[index]
            attempts += 1
            try:
                result = await self._attempt(index, messages, fields, max_tokens, extra)
            except _Attempt as failure:
                if isinstance(failure, _Refused) and adaptations < MAX_ADAPTATIONS \
                        and self._adapt(index, failure.param):
                    # Not a failure of the endpoint: the same request without the field, at once, same endpoint.
                    adaptations += 1
                    attempts -= 1
                    if accounting is not None:
                        accounting.adaptations += 1
                    continue
                reasons.append(f"{endpoint.base_url}: {failure.reason}")
                log.info("LLM attempt %d failed on %s: %s", attempts, endpoint.base_url, failure.reason)
                if failure.fatal:
                    fatal.add(index)
                index = (index + 1) % len(self.endpoints)
                if attempts > self.max_retries or len(fatal) == len(self.endpoints):
                    break
                if accounting is not None:
                    accounting.retries += 1
                if not failure.fatal:
                    await asyncio.sleep(self._delay(attempts, failure.retry_after))
                continue
            if accounting is not None:
                accounting.record(endpoint, result.usage)
            result.retries = attempts - 1
            return result
        if accounting is not None:
            accounting.failures += 1
        raise LLMError(f"all {attempts} attempts failed; last: " + " | ".join(reasons[-3:]), attempts)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1)) * self._random.uniform(0.5, 1.0)
        if retry_after is not None:
            # Honour the server's wait, but only up to a cap: failover may already have moved us elsewhere.
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def _adapt(self, index: int, param: str) -> bool:
        """Learn that endpoint `index` refuses `param`; False when nothing can be changed for it. A refusal of
        what a concurrent call has already learned is True: the request is simply resent as now built."""
        endpoint = self.endpoints[index]
        if param in TOKEN_PARAMS:
            if self._token_param[index] == param:
                other = TOKEN_PARAMS[1 - TOKEN_PARAMS.index(param)]
                log.warning("LLM endpoint %s [%s] refuses %s: sending %s from now on", endpoint.base_url,
                            endpoint.model, param, other)
                self._token_param[index] = other
            return True
        if param in DROPPABLE:
            if param not in self._refused[index]:
                note = " (stop strings are applied by the client)" if param == "stop" else ""
                log.warning("LLM endpoint %s [%s] refuses %s: no longer sent%s", endpoint.base_url,
                            endpoint.model, param, note)
                self._refused[index].add(param)
            return True
        return False

    async def _attempt(self, index: int, messages, fields: dict, max_tokens: int, extra=None) -> ChatResult:
        endpoint = self.endpoints[index]
        refused = self._refused[index]
        payload = {"model": endpoint.model, "messages": messages}
        for key, value in fields.items():
            if value is not None and key not in refused:
                payload[key] = int(value) if key == "seed" else value
        payload[self._token_param[index]] = max_tokens
        payload.update(extra or {})
        body = self._request_body(payload)
        async with self._semaphores[index]:
            self._in_flight[index] += 1
            try:
                # httpx's timeout bounds each phase (connect, each read); the attempt as a whole gets one too.
                async with asyncio.timeout(self.timeout):
                    response = await self._post(index, body)
            except (TimeoutError, httpx.TimeoutException):
                raise _Attempt(f"timed out after {self.timeout:g} s") from None
            except httpx.RequestError as error:   # connection refused/reset, protocol errors, bad encodings
                detail = self._redact(str(error)[:200]) or "no detail"
                raise _Attempt(f"connection error ({type(error).__name__}: {detail})") from None
            finally:
                self._in_flight[index] -= 1
        result = self._parse(*response, endpoint)
        if "stop" in refused and fields.get("stop"):
            result.text, stopped = cut_at_stop(result.text, fields["stop"])
            if stopped:
                result.finish_reason = "stop"
        return result

    def _shard(self, index: int) -> list:
        """The first of endpoint `index`'s clients on the running event loop with a free connection, as [client,
        requests in flight]. A new client (of at most CONNECTIONS_PER_CLIENT connections) only when all are busy:
        building one costs CPU, so clients follow the concurrency a job reaches. Requests in flight never exceed
        max_concurrency (the semaphore), so no client holds more requests than connections. Connections belong
        to the loop that opened them: a second loop (a script calling asyncio.run twice) gets fresh clients, and
        the old loop's are dropped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._clients = [[] for _ in self.endpoints]
        shards = self._clients[index]
        size = min(CONNECTIONS_PER_CLIENT, self.endpoints[index].max_concurrency)
        for shard in shards:   # the first with a free connection: earlier clients' idle connections get reused
            if shard[1] < size:
                return shard
        shard = [self._new_client(index, size), 0]
        shards.append(shard)
        return shard

    def _new_client(self, index: int, connections: int) -> httpx.AsyncClient:
        key = self._keys[index]
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits, verify=self._tls,
                                 http2=_HTTP2, trust_env=True, follow_redirects=False)

    async def _post(self, index: int, body: bytes) -> tuple[int, httpx.Headers, bytes]:
        """POST `body` to endpoint `index` -> (status, headers, body), reading at most max_response_bytes."""
        shard = self._shard(index)
        shard[1] += 1
        try:
            return await self._exchange(shard[0], self._urls[index], body)
        finally:
            shard[1] -= 1

    async def _exchange(self, client: httpx.AsyncClient, url: str, body: bytes):
        async with client.stream("POST", url, content=body) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _Attempt(f"HTTP {response.status_code} response of {declared} bytes, over the "
                               f"{self.max_response_bytes}-byte limit")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _Attempt(f"HTTP {response.status_code} response over the "
                                   f"{self.max_response_bytes}-byte limit")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _request_body(self, payload: dict) -> bytes:
        """json.dumps(payload, ensure_ascii=False) as UTF-8, reusing the JSON of recent message contents: a
        researcher resends its prompt, worked examples and every earlier turn with each step, and encoding
        them all again was a tenth of the synthesizer's CPU."""
        fields = []
        for key, value in payload.items():
            if key == "messages":
                value = "[" + ", ".join(map(self._message_json, value)) + "]"
            else:
                value = _ENCODE(value)
            fields.append(f"{_ENCODE(key)}: {value}")
        return ("{" + ", ".join(fields) + "}").encode("utf-8")

    def _message_json(self, message) -> str:
        if type(message) is not dict or len(message) != 2 or next(iter(message)) != "role" \
                or type(message.get("role")) is not str or type(message.get("content")) is not str:
            return _ENCODE(message)
        content = message["content"]
        encoded = self._encoded.get(content)
        if encoded is None:
            encoded = _ENCODE(content)
            if len(self._encoded) >= _ENCODED_CONTENTS:
                del self._encoded[next(iter(self._encoded))]   # the oldest
            self._encoded[content] = encoded
        return f'{{"role": {_ENCODE(message["role"])}, "content": {encoded}}}'

    def _parse(self, status: int, headers, raw: bytes, endpoint: Endpoint) -> ChatResult:
        if status != 200:
            detail = self._redact(raw[:200].decode("utf-8", "replace").replace("\n", " "))
            if status == 400:
                raise _Refused(f"HTTP {status} {detail}", _refused_param(raw))
            if status in RETRYABLE_STATUS or status >= 500:
                raise _Attempt(f"HTTP {status} {detail}", retry_after=_retry_after(headers.get("retry-after")))
            raise _Attempt(f"HTTP {status} {detail}", fatal=True)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Attempt("invalid JSON in the response body") from None
        if not isinstance(body, dict):
            raise _Attempt("response body is not a JSON object")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Attempt("response has no choices")
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
        reasoning = ""
        if isinstance(message, dict):
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            reasoning = reasoning if isinstance(reasoning, str) else ""
            if text is None and reasoning:
                text = ""   # a reasoning model that spent its budget thinking: an empty answer, not a bad body
        if not isinstance(text, str):
            raise _Attempt("response choice has no text content")
        raw_usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        details = raw_usage.get("completion_tokens_details")
        reasoning_tokens = _count((details if isinstance(details, dict) else raw_usage).get("reasoning_tokens"))
        completion = _count(raw_usage.get("completion_tokens"))
        if reasoning_tokens > completion:   # a server that counts reasoning apart from the completion
            completion += reasoning_tokens
        usage = Usage(prompt_tokens=_count(raw_usage.get("prompt_tokens")), completion_tokens=completion,
                      reasoning_tokens=reasoning_tokens)
        return ChatResult(text=text, model=str(body.get("model") or endpoint.model), usage=usage, retries=0,
                          reasoning=reasoning, finish_reason=str(choices[0].get("finish_reason") or ""))

    async def aclose(self) -> None:
        """Close the connections (of the running loop's clients; those of a finished loop went with it)."""
        if self._loop is asyncio.get_running_loop():
            for shards in self._clients:
                for client, _ in shards:
                    await client.aclose()
        self._clients, self._loop = [], None

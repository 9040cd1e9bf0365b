"""The synth HTTP service (DESIGN contract 7): jobs, the NDJSON trajectory stream, the tools, the judge.

    POST   /v1/jobs                 {"seeds": [{"id"?, "question"}...], "overrides"?: {"workflow.candidates": 1}}
    GET    /v1/jobs/{id}            status and counts;  DELETE /v1/jobs/{id} cancels
    GET    /v1/trajectories?job=ID&after=CURSOR[&follow=true]   NDJSON, one {"cursor", "record"} per line, then
                                    {"cursor", "done": true} once the job is finished; resumable by cursor
    POST   /v1/tools/web_search     {"queries": [...], "num": 10} -> {"observation", "ok", "error", "hits"}
    POST   /v1/tools/crawl_page     {"urls": [...], "goal": "", "context"?: ""} -> {"observation", "ok", "error",
                                    "pages", "meta"}   (context: the trajectory before the call; its last
                                    think/plan is the goal when goal is "")
    POST   /v1/judge                {"question", "report", "trajectory"?, "reference"?}
    GET    /healthz, GET /metrics (Prometheus text), GET /openapi.json

A job's "overrides" may set only the funnel's workflow.* knobs, each within its range (synth/checks.py); the
teacher, judge and tool endpoints, their key variables and the store come from the operator's config file only.

Jobs live in the SQLite store (synth/store.py): a job's synthesizer is built before the job is stored, and on
start-up every job still "running" is resumed, or marked "failed" with its reason ("error") when its synthesizer
can no longer be built. A bearer token is required on every /v1 route when the environment variable named by
`service.token_env` is set.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import logging
import os
import pathlib
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from synth import __version__
from synth.checks import check_overrides, check_seeds
from synth.config import apply_overrides
from synth.store import Store

log = logging.getLogger(__name__)
BUILD_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


MAX_CURSOR = 2 ** 63 - 1   # SQLite's largest integer: a larger `after` is refused before the stream starts


class WebSearchBody(BaseModel):
    queries: list[Annotated[str, Field(max_length=2000)]] = Field(min_length=1, max_length=32)
    num: int = Field(10, ge=1, le=20)


class CrawlPageBody(BaseModel):
    urls: list[Annotated[str, Field(max_length=8192)]] = Field(min_length=1, max_length=16)
    goal: str = Field("", max_length=4000)
    context: str = Field("", max_length=200_000)


class JudgeBody(BaseModel):
    question: str = Field(min_length=1, max_length=20000)
    report: str = Field(max_length=400000)
    trajectory: Any = None
    reference: str | None = Field(None, max_length=400000)

    @field_validator("trajectory")
    @classmethod
    def _trajectory_shape(cls, value):
        """The shapes the judge reads (synth.judge.trajectory_text); any other is the client's error, not ours."""
        if value is None or isinstance(value, str):
            return value
        messages = value.get("messages") if isinstance(value, dict) else value
        if isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("role", ""), str)
                                              and isinstance(m.get("content", ""), str) for m in messages):
            return value
        raise ValueError('give the trajectory as its text, a record {"messages": [...]} or a list of messages, '
                         'each {"role": str, "content": str}')


class Seed(BaseModel):
    id: str | int | None = None
    question: str = Field(min_length=1)


class JobBody(BaseModel):
    seeds: list[Seed] = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


def too_large_response(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit} bytes (service.max_body_bytes); send less per "
                                   "request (e.g. split a job's seeds)"}, status_code=413)


class _TooLarge(HTTPException):
    def __init__(self):
        super().__init__(413)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by its Content-Length before anything is read,
    or as the bytes of a body without one arrive (so no request body is ever held whole past the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await too_large_response(self.limit)(scope, receive, send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()   # an HTTPException: FastAPI passes it on to the 413 handler
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await too_large_response(self.limit)(scope, receive, send)


def _store_path(cfg) -> pathlib.Path:
    if cfg.service.store:
        return pathlib.Path(cfg.service.store)
    from synth.tools.cache import cache_dir
    return cache_dir(cfg.tools.cache_dir or None) / "synth_jobs.sqlite"


class Metrics:
    """Counters and summed latencies, rendered in the Prometheus text format."""

    def __init__(self):
        self.counts = collections.Counter()
        self.seconds = collections.Counter()

    def observe(self, name: str, seconds: float, ok: bool = True) -> None:
        self.counts[(name, "ok" if ok else "error")] += 1
        self.seconds[name] += seconds

    def render(self, extra: dict[str, float]) -> str:
        lines = ["# TYPE synth_requests_total counter"]
        for (name, outcome), n in sorted(self.counts.items()):
            lines.append(f'synth_requests_total{{endpoint="{name}",outcome="{outcome}"}} {n}')
        lines.append("# TYPE synth_request_seconds_total counter")
        for name, s in sorted(self.seconds.items()):
            lines.append(f'synth_request_seconds_total{{endpoint="{name}"}} {s:.6f}')
        for key, value in extra.items():
            lines.append(f"# TYPE {key} gauge")
            lines.append(f"{key} {value}")
        return "\n".join(lines) + "\n"


def create_app(cfg, *, eager: bool = False) -> FastAPI:
    """The FastAPI app for config `cfg` (ConfigDict from configs/synth.py). eager=True builds the teacher, tools
    and judge now, so that a bad config fails (ValueError naming the key) before the server listens."""
    from synth.funnel import Synthesizer, run_job  # the workflow is only needed once a job runs
    from synth.pool import make_synthesizer

    body_limit = int(cfg.service.get("max_body_bytes", 32 << 20))
    app = FastAPI(title="oresearcher synth", version=__version__,
                  description="Research trajectory synthesis: jobs, tools and judge (DESIGN contract 7).")
    app.add_middleware(BodyLimit, limit=body_limit)
    state: dict[str, Any] = {"tasks": {}}
    metrics = Metrics()
    token = os.environ.get(cfg.service.token_env, "") if cfg.service.token_env else ""

    def synthesizer() -> Synthesizer:
        if "synth" not in state:   # in process, or worker processes with workflow.processes > 1 (synth/pool.py)
            state["synth"] = make_synthesizer(cfg)
        return state["synth"]

    def store() -> Store:
        if "store" not in state:
            state["store"] = Store(_store_path(cfg))
        return state["store"]

    if eager:
        synthesizer()

    bearer = HTTPBearer(auto_error=False, description=f"the value of ${cfg.service.token_env or 'SYNTH_TOKEN'} "
                        "on the server; required when it is set")

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials if credentials else ""
        # compare_digest: the time taken does not tell a client how much of its guess was right
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, detail="missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                            f"(the value of ${cfg.service.token_env})",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(413)
    async def too_large(request: Request, error):
        return too_large_response(body_limit)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError):
        problems = [{"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "problem": e["msg"]}
                    for e in error.errors()]
        fields = ", ".join(p["field"] for p in problems)
        return JSONResponse({"error": f"invalid request field(s): {fields}", "detail": problems}, status_code=422)

    def build(overrides: dict):
        """The synthesizer of a job with these overrides, built now: the checks and the build raise BUILD_ERRORS
        naming the problem, before anything is stored or started."""
        base = synthesizer()
        if not overrides:
            return base
        job_cfg = apply_overrides(cfg.copy_and_resolve_references(), check_overrides(overrides))
        return Synthesizer.from_config(job_cfg, tools=base.tools)

    def start_job(job_id: str, synth) -> None:
        async def run() -> None:
            try:
                await run_job(store(), job_id, synth, concurrency=cfg.workflow.question_concurrency)
            finally:
                if synth is not state["synth"]:   # built for this job's overrides: its own LLM clients
                    await synth.aclose_clients()

        task = asyncio.create_task(run())
        state["tasks"][job_id] = task
        task.add_done_callback(lambda _: state["tasks"].pop(job_id, None))

    @app.on_event("startup")
    async def resume() -> None:
        synthesizer()   # the operator's config must build: an error here names the key and stops the start
        for job_id in store().jobs("running"):
            try:
                synth = build(store().job(job_id)["overrides"])
            except BUILD_ERRORS as error:   # e.g. overrides stored by an older version that no check refuses now
                reason = f"its synthesizer cannot be built again: {error}"
                log.error("job %s marked failed: %s", job_id, reason)
                store().fail(job_id, reason)
                continue
            start_job(job_id, synth)

    @app.on_event("shutdown")
    async def close() -> None:
        for task in list(state["tasks"].values()):
            task.cancel()
        if "synth" in state:
            await state["synth"].aclose()

    # -------------------------------------------------------------------------------------------- tools
    @app.post("/v1/tools/web_search", dependencies=[Depends(authorize)])
    async def web_search(body: WebSearchBody):
        start = time.perf_counter()
        result = await synthesizer().tools.web_search(body.queries, body.num)
        metrics.observe("web_search", time.perf_counter() - start, result.ok)
        out = result.to_json()
        out.pop("pages", None)
        return out

    @app.post("/v1/tools/crawl_page", dependencies=[Depends(authorize)])
    async def crawl_page(body: CrawlPageBody):
        start = time.perf_counter()
        result = await synthesizer().tools.crawl_page(body.urls, body.goal, context=body.context)
        metrics.observe("crawl_page", time.perf_counter() - start, result.ok)
        out = result.to_json()
        out.pop("hits", None)
        return out

    @app.post("/v1/judge", dependencies=[Depends(authorize)])
    async def judge(body: JudgeBody):
        start = time.perf_counter()
        result = await synthesizer().judge.score(body.question, body.report, body.trajectory, body.reference)
        metrics.observe("judge", time.perf_counter() - start, not result.abstained)
        return result.to_json()

    # -------------------------------------------------------------------------------------------- jobs
    @app.post("/v1/jobs", dependencies=[Depends(authorize)], status_code=201)
    async def create_job(body: JobBody):
        if len(body.seeds) > cfg.service.max_seeds:
            raise HTTPException(422, detail=f"seeds: {len(body.seeds)} > {cfg.service.max_seeds} "
                                            "(service.max_seeds); split the job")
        # the checks of `synth run` (synth/checks.py); a request is refused whole rather than run in part
        seeds, problems = check_seeds([(f"seeds.{i}", s.model_dump(exclude_none=True))
                                       for i, s in enumerate(body.seeds)], cfg.service.max_question_chars)
        if problems:
            raise HTTPException(422, detail="; ".join(f"{where}.{field}: {problem}"
                                                      for where, field, problem in problems))
        try:
            check_overrides(body.overrides)   # cheap, before the first job builds the tools
        except ValueError as error:
            raise HTTPException(422, detail=f"overrides: {error}") from None
        try:
            synthesizer()
        except BUILD_ERRORS as error:
            raise HTTPException(503, detail=f"the service's config cannot build a synthesizer: {error}") from None
        try:
            synth = build(body.overrides)   # before the job is stored: a job that cannot run is never accepted
        except BUILD_ERRORS as error:
            raise HTTPException(422, detail=f"overrides: {error}") from None
        job_id = store().create_job(seeds, body.overrides)
        start_job(job_id, synth)
        return store().job(job_id)

    def existing(job_id: str) -> dict:
        job = store().job(job_id)
        if job is None:
            raise HTTPException(404, detail=f"job: no job {job_id!r}")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorize)])
    async def get_job(job_id: str):
        return existing(job_id)

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(authorize)])
    async def cancel_job(job_id: str):
        existing(job_id)
        store().set_status(job_id, "cancelled")
        task = state["tasks"].get(job_id)
        if task is not None:
            task.cancel()
        return existing(job_id)

    @app.get("/v1/trajectories", dependencies=[Depends(authorize)])
    async def trajectories(job: str, after: int = Query(0, ge=0, le=MAX_CURSOR), follow: bool = False):
        """NDJSON, one {"cursor": int, "record": {...}} line per accepted trajectory, in cursor order; `after` =
        the last cursor seen (0 = from the start). A last line {"cursor": c, "done": true} says the job is
        finished and nothing follows; without it (a running job, follow=false) ask again later from the last
        cursor. follow=true keeps the stream open until the job is finished."""
        existing(job)

        async def lines():
            cursor = after
            while True:
                running = store().job(job)["status"] == "running"   # read before the rows: none can be missed
                batch = store().trajectories(job, cursor)
                for cursor, record in batch:
                    yield json.dumps({"cursor": cursor, "record": record}, ensure_ascii=False) + "\n"
                if batch:
                    continue
                if not running:
                    yield json.dumps({"cursor": cursor, "done": True}) + "\n"
                    return
                if not follow:
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # -------------------------------------------------------------------------------------------- ops
    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "version": __version__, "preset": cfg.preset, "jobs_running": len(state["tasks"])}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return metrics.render({"synth_jobs_running": len(state["tasks"])})

    return app


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); any other name or address is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(cfg, host: str, insecure: bool = False) -> str | None:
    """Why serving on `host` is refused (no token on a non-loopback address, without --insecure), else None."""
    env = cfg.service.token_env
    if insecure or is_loopback(host) or (env and os.environ.get(env)):
        return None
    return (f"--host {host}: refusing to serve every /v1 route without a token on a non-loopback address; set "
            f"{env or 'SYNTH_TOKEN'} (the variable named by service.token_env) to a secret, e.g. "
            f"`export {env or 'SYNTH_TOKEN'}=$(openssl rand -hex 32)`, and send 'Authorization: Bearer <token>', or "
            "pass --insecure to serve without one")


def serve(cfg, host: str, port: int) -> None:
    import uvicorn
    uvicorn.run(create_app(cfg, eager=True), host=host, port=port, log_level="warning")

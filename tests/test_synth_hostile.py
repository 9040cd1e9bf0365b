"""The synth service against a hostile or careless client, over real HTTP on loopback.

1. A job's overrides cannot reach the operator's settings: teacher/judge/tool endpoints, key variables, the store.
   A canary listener on loopback, offered as every endpoint, receives nothing, and the value of an environment
   variable named in the attack appears nowhere.
2. A job whose synthesizer cannot be built is refused and not stored; a store holding an unbuildable running job
   (written by an older version) still starts, with that job marked failed and its reason.
3. No token on a non-loopback address is refused at start-up (unless --insecure); the token check and the bearer
   scheme in OpenAPI.
4. Body size limit (413), the CLI's seed validation over HTTP, cursors out of range, non-UTF-8 seed files, and
   4xx (never 500) for malformed requests.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from scripted_openai import LocalServer

from synth.config import load_config
from synth.service import create_app
from synth.store import Store

REPO = Path(__file__).resolve().parents[1]
SECRET = "hostile-canary-secret-7f3a"
http = httpx.Client(timeout=120)   # a job's first request builds the tools (the corpus index): slow on a busy machine


def config(tmp_path, **overrides):
    return load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"),
                                            "service.store": str(tmp_path / "jobs.sqlite"),
                                            "service.token_env": "SYNTH_TEST_TOKEN_UNSET", **overrides})


@pytest.fixture
def canary():
    """A loopback listener that records every request it gets (it should get none)."""
    app = FastAPI()
    app.state.hits = []

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def anything(path: str, request: Request):
        app.state.hits.append((request.method, path, dict(request.headers), await request.body()))
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}], "organic": []}

    with LocalServer(app) as server:
        server.hits = app.state.hits
        yield server


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTILE_SECRET", SECRET)
    with LocalServer(create_app(config(tmp_path))) as server:
        yield server.url


def wait_done(url: str, job: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = http.get(f"{url}/v1/jobs/{job}").json()
        if state["status"] != "running":
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not finish: {state}")


# ------------------------------------------------------------------------------ 1. overrides
def attacks(canary_url: str) -> list[tuple[dict, str]]:
    endpoint = {"base_url": f"{canary_url}/v1", "model": "x", "api_key_env": "HOSTILE_SECRET", "max_concurrency": 1}
    return [
        ({"teacher.kind": "openai", "teacher.endpoints": [endpoint]}, "teacher.kind"),
        ({"teacher.endpoints": [endpoint]}, "teacher.endpoints"),
        ({"judge.kind": "llm", "judge.endpoints": [endpoint]}, "judge.kind"),
        ({"judge.endpoints": [endpoint]}, "judge.endpoints"),
        ({"tools.search.backend": "serper"}, "tools.search.backend"),
        ({"tools.search.serper_url": f"{canary_url}/search"}, "tools.search.serper_url"),
        ({"tools.search.serper_key_envs": ["HOSTILE_SECRET"]}, "tools.search.serper_key_envs"),
        ({"tools.crawl.backend": "http", "tools.crawl.allow": ["127.0.0.1"]}, "tools.crawl"),
        ({"tools.cache_dir": "/tmp"}, "tools.cache_dir"),
        ({"service.token_env": "HOSTILE_SECRET"}, "service.token_env"),
        ({"service.store": "/tmp/elsewhere.sqlite"}, "service.store"),
        ({"preset": "openai"}, "preset"),
        ({"workflow": {"candidates": 2}}, "workflow"),
        ({"workflow.processes": 64}, "workflow.processes"),
        ({"workflow.question_concurrency": 4096}, "workflow.question_concurrency"),
        ({"workflow.candidates": 1000}, "workflow.candidates"),
        ({"workflow.candidates": 0}, "workflow.candidates"),
        ({"workflow.candidates": -3}, "workflow.candidates"),
        ({"workflow.candidates": "3"}, "workflow.candidates"),
        ({"workflow.candidates": 2.5}, "workflow.candidates"),
        ({"workflow.candidates": True}, "workflow.candidates"),
        ({"workflow.step_budget": 10 ** 9}, "workflow.step_budget"),
        ({"workflow.mode": "everything"}, "workflow.mode"),
        ({"workflow.role_chats": "yes"}, "workflow.role_chats"),
        ({"workflow.nope": 1}, "workflow.nope"),
    ]


def test_overrides_never_reach_the_operators_settings(service, canary, tmp_path):
    seeds = [{"id": "v1", "question": "How do volcanoes form?"}]
    for overrides, key in attacks(canary.url):
        r = http.post(f"{service}/v1/jobs", json={"seeds": seeds, "overrides": overrides})
        assert 400 <= r.status_code < 500, (overrides, r.status_code, r.text)
        assert key in r.json()["detail"], (overrides, r.text)
        assert SECRET not in r.text
    assert Store(tmp_path / "jobs.sqlite").jobs() == [], "a refused job must not be stored"

    # the allowed knobs still work, and the job they make calls nothing outside the process
    allowed = {"workflow.candidates": 1, "workflow.step_budget": 6, "workflow.mode": "sequential",
               "workflow.min_subtasks": 3, "workflow.max_subtasks": 4, "workflow.role_chats": False}
    r = http.post(f"{service}/v1/jobs", json={"seeds": seeds, "overrides": allowed})
    assert r.status_code == 201, r.text
    state = wait_done(service, r.json()["id"])
    assert state["status"] == "done" and state["accepted"] == 1
    stream = http.get(f"{service}/v1/trajectories", params={"job": state["id"]}).text
    assert '"candidates": 1' in stream and SECRET not in stream
    assert canary.hits == [], f"the canary was called: {canary.hits[:1]}"



def test_a_jobs_calls_go_only_to_the_operators_endpoint_with_the_operators_key(tmp_path, canary, monkeypatch):
    """The operator's teacher is an LLM endpoint: a job with allowed overrides (its own synthesizer) calls that
    endpoint with the operator's key, and nothing else; its LLM clients are closed when it ends."""
    from scripted_openai import ScriptedOpenAI
    monkeypatch.setenv("OPERATOR_KEY", "operator-key-1")
    monkeypatch.setenv("HOSTILE_SECRET", SECRET)
    with ScriptedOpenAI(["not a plan"]) as teacher:
        cfg = config(tmp_path, **{"teacher.kind": "openai", "teacher.max_retries": 0, "teacher.endpoints": [
            {"base_url": teacher.base_url, "model": "scripted-model", "api_key_env": "OPERATOR_KEY"}]})
        with LocalServer(create_app(cfg)) as server:
            seeds = [{"id": "o1", "question": "How do volcanoes form?"}]
            for overrides, key in attacks(canary.url):
                refused = http.post(f"{server.url}/v1/jobs", json={"seeds": seeds, "overrides": overrides})
                assert refused.status_code == 422, (key, refused.text)
            r = http.post(f"{server.url}/v1/jobs", json={"seeds": seeds, "overrides": {"workflow.candidates": 2}})
            assert r.status_code == 201, r.text
            state = wait_done(server.url, r.json()["id"])
    assert state["status"] == "done" and state["total"] == 1
    assert teacher.headers and set(teacher.headers) == {"Bearer operator-key-1"}
    assert canary.hits == []


# ------------------------------------------------------------------------------ 2. build before storing, resume
def test_a_job_that_cannot_be_built_is_refused_and_not_stored(service, tmp_path):
    seeds = [{"id": "b1", "question": "How do glaciers shape valleys?"}]
    # each knob is in range, but together they cannot build a workflow
    r = http.post(f"{service}/v1/jobs", json={"seeds": seeds, "overrides": {"workflow.min_subtasks": 6,
                                                                             "workflow.max_subtasks": 3}})
    assert r.status_code == 422 and "workflow.min_subtasks" in r.json()["detail"], r.text
    assert Store(tmp_path / "jobs.sqlite").jobs() == []
    assert http.get(f"{service}/healthz").json()["jobs_running"] == 0


def test_a_service_whose_config_cannot_build_refuses_jobs_without_storing_them(tmp_path):
    app = create_app(config(tmp_path, **{"teacher.kind": "openai"}))   # no teacher endpoints configured
    with LocalServer(app) as server:
        r = http.post(f"{server.url}/v1/jobs", json={"seeds": [{"question": "What is jazz?"}]})
        assert r.status_code == 503 and "endpoints" in r.json()["detail"], r.text
    assert Store(tmp_path / "jobs.sqlite").jobs() == []


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(tmp_path, port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "synth", "serve", "--config=configs/synth.py", "--host", host, "--port", str(port),
            f"--config.tools.cache_dir={tmp_path / 'cache'}", f"--config.service.store={tmp_path / 'jobs.sqlite'}",
            *extra]


def wait_up(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited with {proc.returncode}: {proc.stdout.read()[-3000:]}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("service did not start")


def test_a_store_with_an_unbuildable_running_job_starts_and_marks_it_failed(tmp_path):
    store = Store(tmp_path / "jobs.sqlite")   # as an older version stored them: any override was taken
    bad = store.create_job([{"id": "x1", "question": "What is the Silk Road?"}],
                           {"teacher.kind": "openai", "teacher.endpoints": [{"base_url": "http://127.0.0.1:9/v1",
                                                                             "model": "m"}]})
    good = store.create_job([{"id": "g1", "question": "How do volcanoes form?"}], {"workflow.candidates": 1})
    store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(serve_command(tmp_path, port), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "SYNTH_TOKEN": ""})
    try:
        wait_up(proc, url)
        failed = http.get(f"{url}/v1/jobs/{bad}").json()
        assert failed["status"] == "failed" and "teacher.kind" in failed["error"], failed
        assert wait_done(url, good)["status"] == "done"
        lines = http.get(f"{url}/v1/trajectories", params={"job": bad}).text.splitlines()
        assert [json.loads(line) for line in lines] == [{"cursor": 0, "done": True}]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------ 3. token, bind address, OpenAPI
def test_a_non_loopback_address_without_a_token_is_refused(tmp_path):
    port = free_port()
    env = {**os.environ, "SYNTH_TOKEN": ""}
    refused = subprocess.run(serve_command(tmp_path, port, host="0.0.0.0"), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "SYNTH_TOKEN" in refused.stderr and "--insecure" in refused.stderr and "0.0.0.0" in refused.stderr
    # with a token it serves, and the token is needed; loopback needs none; --insecure is the explicit escape
    for host, extra, token in (("0.0.0.0", (), "tok-1"), ("localhost", (), ""), ("0.0.0.0", ("--insecure",), "")):
        port = free_port()
        proc = subprocess.Popen(serve_command(tmp_path, port, *extra, host=host), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**env, "SYNTH_TOKEN": token})
        try:
            wait_up(proc, f"http://127.0.0.1:{port}")
            r = http.get(f"http://127.0.0.1:{port}/v1/jobs/none")
            assert r.status_code == (401 if token else 404), (host, extra, r.status_code)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_bearer_token_is_checked_and_declared_in_openapi(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_TOKEN", "s3cret-token")
    with LocalServer(create_app(config(tmp_path, **{"service.token_env": "SYNTH_TEST_TOKEN"}))) as server:
        url = f"{server.url}/v1/jobs/none"
        for header in (None, b"Bearer", b"Bearer s3cret", b"Bearer s3cret-token-and-more",
                       b"Basic s3cret-token", b"Bearer \xe9\xff x", b"s3cret-token"):
            r = http.get(url, headers={"Authorization": header} if header is not None else {})
            assert r.status_code == 401, (header, r.status_code)
            assert "s3cret" not in r.text and r.headers["www-authenticate"] == "Bearer"
        assert http.get(url, headers={"Authorization": "Bearer s3cret-token"}).status_code == 404
        assert http.get(url, headers={"Authorization": "bearer s3cret-token"}).status_code == 404   # RFC 7235
        spec = http.get(f"{server.url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values() if s["type"] == "http"] == ["bearer"]
    name = next(iter(schemes))
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert (operation.get("security") == [{name: []}]) == path.startswith("/v1"), (method, path)


# ------------------------------------------------------------------------------ 4. bad input, 4xx not 500
@pytest.fixture
def small(tmp_path):
    """A service with a 64 KiB body limit."""
    with LocalServer(create_app(config(tmp_path, **{"service.max_body_bytes": 65536}))) as server:
        yield server.url


def test_a_body_over_the_limit_is_refused_with_413(small):
    seeds = [{"id": f"s{i}", "question": "What is known about the honey bee? " * 20} for i in range(2000)]
    body = json.dumps({"seeds": seeds}).encode()
    assert len(body) > 10 * 65536
    sized = http.post(f"{small}/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert sized.status_code == 413 and "service.max_body_bytes" in sized.json()["detail"], sized.text

    def chunks():   # no Content-Length: the limit counts the bytes as they arrive
        for start in range(0, len(body), 16384):
            yield body[start:start + 16384]
    chunked = http.post(f"{small}/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert http.post(f"{small}/v1/judge", json={"question": "q", "report": "r" * 70000}).status_code == 413
    assert http.get(f"{small}/healthz").json()["jobs_running"] == 0


@pytest.mark.parametrize("seeds,named", [
    ([{"question": "   \n\t "}], "seeds.0.question"),
    ([{"id": "a", "question": "How do volcanoes form?"}, {"id": "a", "question": "What is jazz?"}], "seeds.1.id"),
    ([{"id": "a", "question": "What is jazz?"}, {"id": 7, "question": " "}], "seeds.1.question"),
    ([{"question": "q" * 20001}], "seeds.0.question"),
])
def test_seeds_are_checked_as_the_cli_checks_them(service, tmp_path, seeds, named):
    r = http.post(f"{service}/v1/jobs", json={"seeds": seeds})
    assert r.status_code == 422 and named in r.text, r.text
    from synth.cli import read_seeds  # the same seeds as a file: the same problems, named by line
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in seeds))
    _, errors = read_seeds(str(path), 20000)
    line = int(named.split(".")[1]) + 1
    assert [e.split(":")[0] for e in errors] == [f"seeds.jsonl line {line}"]
    problem = errors[0].split(": ", 1)[1].split(" at ")[0]   # the same words, where aside
    assert problem in r.json()["detail"], (problem, r.text)


def test_a_repeated_seed_is_synthesized_once_as_in_the_cli(service):
    seed = {"id": "r1", "question": "How do honey bees pollinate flowers?"}
    r = http.post(f"{service}/v1/jobs", json={"seeds": [seed, dict(seed)], "overrides": {"workflow.candidates": 1}})
    assert r.status_code == 201 and r.json()["total"] == 1
    state = wait_done(service, r.json()["id"])
    ids = [json.loads(line)["record"]["id"] for line in
           http.get(f"{service}/v1/trajectories", params={"job": state["id"]}).text.splitlines()[:-1]]
    assert ids == ["r1"] * state["accepted"] and state["accepted"] <= 1


MALFORMED = [
    ("post", "/v1/jobs", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("post", "/v1/jobs", {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}}),
    ("post", "/v1/jobs", {"json": []}),
    ("post", "/v1/jobs", {"json": {"seeds": "What is jazz?"}}),
    ("post", "/v1/jobs", {"json": {"seeds": []}}),
    ("post", "/v1/jobs", {"json": {"seeds": [None]}}),
    ("post", "/v1/jobs", {"json": {"seeds": [{"question": 5}]}}),
    ("post", "/v1/jobs", {"json": {"seeds": [{"question": "What is jazz?", "id": {"a": 1}}]}}),
    ("post", "/v1/jobs", {"json": {"seeds": [{"question": "What is jazz?"}], "overrides": []}}),
    ("post", "/v1/jobs", {"json": {"seeds": [{"question": "What is jazz?"}],
                                   "overrides": {"workflow.candidates": None}}}),
    ("post", "/v1/jobs", {"json": {"seeds": [{"question": "What is jazz?"}], "overrides": {"": 1}}}),
    ("post", "/v1/jobs", {"content": b'{"seeds": [{"question": "x"}]}', "headers": {"content-type": "text/plain"}}),
    ("post", "/v1/tools/web_search", {"json": {"queries": ["a"], "num": 2 ** 70}}),
    ("post", "/v1/tools/web_search", {"json": {"queries": [None]}}),
    ("post", "/v1/tools/web_search", {"json": {"queries": ["x" * 5000]}}),
    ("post", "/v1/tools/crawl_page", {"json": {"urls": "https://example.org"}}),
    ("post", "/v1/tools/crawl_page", {"json": {"urls": ["u" * 9000]}}),
    ("post", "/v1/judge", {"json": {"question": "q", "report": "r", "trajectory": 5}}),
    ("post", "/v1/judge", {"json": {"question": "q", "report": "r", "trajectory": {"messages": "x"}}}),
    ("post", "/v1/judge", {"json": {"question": "q", "report": "r",
                                    "trajectory": [{"role": "assistant", "content": 5}]}}),
    ("post", "/v1/judge", {"json": {"question": "q", "report": None}}),
    ("get", "/v1/trajectories", {"params": {"job": "x", "after": "99999999999999999999"}}),
    ("get", "/v1/trajectories", {"params": {"job": "x", "after": "-1"}}),
    ("get", "/v1/trajectories", {"params": {"job": "x", "after": "1e3"}}),
    ("get", "/v1/trajectories", {"params": {"after": "0"}}),
    ("get", "/v1/trajectories", {"params": {"job": "x", "follow": "maybe"}}),
    ("get", "/v1/trajectories", {"params": {"job": "no-such-job"}}),
    ("get", "/v1/jobs/%00%ff", {}),
    ("delete", "/v1/jobs/no-such-job", {}),
    ("put", "/v1/jobs", {"json": {}}),
]


def test_every_malformed_request_gets_a_4xx(service):
    for method, path, kwargs in MALFORMED:
        r = http.request(method, f"{service}{path}", **kwargs)
        assert 400 <= r.status_code < 500, (method, path, kwargs, r.status_code, r.text[:300])


def test_a_cursor_out_of_range_is_refused_before_the_stream_starts(service):
    job = http.post(f"{service}/v1/jobs", json={"seeds": [{"question": "What is the Silk Road?"}],
                                                "overrides": {"workflow.candidates": 1}}).json()["id"]
    r = http.get(f"{service}/v1/trajectories", params={"job": job, "after": "99999999999999999999"})
    assert r.status_code == 422 and "after" in r.text and "application/x-ndjson" not in r.headers["content-type"]
    wait_done(service, job)
    top = http.get(f"{service}/v1/trajectories", params={"job": job, "after": str(2 ** 63 - 1)})
    assert top.status_code == 200 and json.loads(top.text.splitlines()[-1])["done"] is True


def test_the_cli_names_file_and_line_of_bytes_that_are_not_utf8(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b'\xef\xbb\xbf{"id": "ok", "question": "How do volcanoes form?"}\n'
                      b'{"id": "bad", "question": "caf\xe9 culture?"}\n')
    cmd = [sys.executable, "-m", "synth", "run", "--config=configs/synth.py", f"--seeds={seeds}",
           f"--out={tmp_path / 'out'}", f"--config.tools.cache_dir={tmp_path / 'cache'}",
           "--config.workflow.candidates=1", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "seeds.jsonl line 2: not UTF-8 (byte 0xe9 at byte 31)" in done.stderr, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["questions"] == 1 and len(summary["seed_errors"]) == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert all("\ufffd" not in r["question"] for r in records) and [r["id"] for r in records] in ([], ["ok"])


def test_the_cli_refuses_a_workflow_out_of_range(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"question": "What is jazz?"}) + "\n")
    cmd = [sys.executable, "-m", "synth", "run", "--config=configs/synth.py", f"--seeds={seeds}",
           f"--out={tmp_path / 'out'}", f"--config.tools.cache_dir={tmp_path / 'cache'}",
           "--config.workflow.candidates=0"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "workflow.candidates=0" in done.stderr, done.stderr[-2000:]

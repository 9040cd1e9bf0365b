"""The synth HTTP service over real HTTP: tools, judge, jobs and the NDJSON stream, auth, 4xx errors naming the
field, and a real `python -m synth serve` subprocess killed with SIGKILL three times during a 50-question job."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from scripted_openai import LocalServer

from oresearcher import protocol
from synth.config import load_config
from synth.service import create_app

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path, **overrides):
    return load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"),
                                            "service.store": str(tmp_path / "jobs.sqlite"),
                                            "service.token_env": "SYNTH_TEST_TOKEN_UNSET", **overrides})


@pytest.fixture
def service(tmp_path):
    with LocalServer(create_app(config(tmp_path))) as server:
        yield server.url


def test_tools_and_judge_endpoints(service):
    # the first call builds the tools (the corpus index): seconds on a busy machine, beyond httpx's 5 s default
    r = httpx.post(f"{service}/v1/tools/web_search", json={"queries": ["photosynthesis chlorophyll"], "num": 3},
                   timeout=120)
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] and body["error"] is None and len(body["hits"]) == 3
    assert body["observation"].startswith("# Search Summary")
    url = body["hits"][0]["url"]
    r = httpx.post(f"{service}/v1/tools/crawl_page", json={"urls": [url], "goal": "light energy"})
    page = r.json()
    assert page["ok"] and page["observation"].startswith("# Synthesis Report") and page["pages"][0]["url"] == url
    missing = httpx.post(f"{service}/v1/tools/crawl_page", json={"urls": ["https://en.wikipedia.org/wiki/No_such_page_x"]})
    assert missing.status_code == 200 and missing.json()["ok"] is False and missing.json()["error"]
    report = (f"# Photosynthesis\nPlants turn light into chemical energy [1].\n\n## Conclusion\nSo it goes [1].\n\n"
              f"## References\n[1]. {url} - {page['pages'][0]['title']}")
    verdict = httpx.post(f"{service}/v1/judge", json={"question": "What is photosynthesis?", "report": report}).json()
    assert verdict["abstained"] is False and 0 <= verdict["overall"] <= 1 and verdict["judge"] == "heuristic"
    assert set(verdict["scores"]) == {"comprehensiveness", "insight", "instruction_following", "readability"}
    empty = httpx.post(f"{service}/v1/judge", json={"question": "What is photosynthesis?", "report": " "}).json()
    assert empty["abstained"] is True and empty["reason"]
    assert httpx.get(f"{service}/healthz").json()["ok"] is True
    metrics = httpx.get(f"{service}/metrics").text
    assert 'synth_requests_total{endpoint="web_search",outcome="ok"} 1' in metrics
    assert "/v1/tools/web_search" in httpx.get(f"{service}/openapi.json").json()["paths"]


@pytest.mark.parametrize("path,body,field", [
    ("/v1/tools/web_search", {"queries": [], "num": 10}, "queries"),
    ("/v1/tools/web_search", {"queries": ["a"], "num": 50}, "num"),
    ("/v1/tools/crawl_page", {"goal": "x"}, "urls"),
    ("/v1/judge", {"report": "r"}, "question"),
    ("/v1/jobs", {"seeds": [{"id": "a"}]}, "seeds.0.question"),
    ("/v1/jobs", {"seeds": [{"question": "q" * 30000}]}, "seeds.0.question"),
    ("/v1/jobs", {"seeds": [{"question": "q"}], "overrides": {"workflow.nope": 1}}, "overrides"),
])
def test_bad_requests_name_the_field(service, path, body, field):
    r = httpx.post(f"{service}{path}", json=body)
    assert 400 <= r.status_code < 500
    assert field in r.text


def test_bearer_token(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_TOKEN", "s3cret")
    with LocalServer(create_app(config(tmp_path, **{"service.token_env": "SYNTH_TEST_TOKEN"}))) as server:
        body = {"queries": ["volcano"], "num": 2}
        assert httpx.post(f"{server.url}/v1/tools/web_search", json=body).status_code == 401
        wrong = httpx.post(f"{server.url}/v1/tools/web_search", json=body, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401 and "s3cret" not in wrong.text
        ok = httpx.post(f"{server.url}/v1/tools/web_search", json=body, headers={"Authorization": "Bearer s3cret"},
                        timeout=120)   # the first call builds the tools
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/v1/jobs/x", headers={"Authorization": "Bearer s3cret"}).status_code == 404
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def stream(url: str, job: str, after: int = 0, finished: bool = True) -> list[dict]:
    """The {"cursor", "record"} lines of the trajectory stream; a finished job's stream ends with a done line."""
    r = httpx.get(f"{url}/v1/trajectories", params={"job": job, "after": after}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    if finished:
        assert lines and lines[-1]["done"] is True and set(lines[-1]) == {"cursor", "done"}, lines[-1:]
        assert lines[-1]["cursor"] == (lines[-2]["cursor"] if len(lines) > 1 else after)
        lines = lines[:-1]
    assert all(set(line) == {"cursor", "record"} for line in lines)
    return lines


def wait_done(url: str, job: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/v1/jobs/{job}").json()
        if state["status"] != "running":
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not finish: {state}")


def test_job_and_resumable_stream(service):
    seeds = [{"id": f"j{i}", "question": q} for i, q in enumerate(
        ["How do volcanoes form?", "What is the Silk Road?", "How do honey bees pollinate flowers?"])]
    r = httpx.post(f"{service}/v1/jobs", json={"seeds": seeds, "overrides": {"workflow.candidates": 2}})
    assert r.status_code == 201
    job = r.json()["id"]
    state = wait_done(service, job)
    assert state["status"] == "done" and state["accepted"] + state["rejected"] == 3 and state["accepted"] >= 2
    lines = stream(service, job)
    assert [l["cursor"] for l in lines] == sorted(l["cursor"] for l in lines)
    assert len(lines) == state["accepted"]
    for line in lines:
        assert line["record"]["meta"]["candidates"] == 2
        assert protocol.validate(line["record"]["messages"][2]["content"]) == []
    rest = stream(service, job, after=lines[0]["cursor"])
    assert [l["record"]["id"] for l in rest] == [l["record"]["id"] for l in lines[1:]]
    assert stream(service, job, after=lines[-1]["cursor"]) == []
    assert httpx.get(f"{service}/v1/jobs/nope").status_code == 404
    assert httpx.delete(f"{service}/v1/jobs/{job}").json()["status"] == "cancelled"


def test_the_data_reader_follows_a_running_job_and_resumes_from_a_cursor(service):
    """oresearcher.data.read_records reads the live stream (follow=true while the job runs, ending at the done
    line) and, given after=CURSOR, continues with exactly the records after that cursor."""
    from oresearcher.data.records import RecordStats, read_records
    seeds = [{"id": f"d{i}", "question": q} for i, q in enumerate(
        ["How do glaciers shape valleys?", "What caused the Black Death?", "How does a steam engine work?",
         "What is plate tectonics?"])]
    job = httpx.post(f"{service}/v1/jobs", json={"seeds": seeds, "overrides": {"workflow.candidates": 1}}).json()
    assert job["status"] == "running"
    stats = RecordStats()
    live = list(read_records(f"{service}/v1/trajectories?job={job['id']}&follow=true", on_bad_record="stop",
                             stats=stats))
    state = httpx.get(f"{service}/v1/jobs/{job['id']}").json()
    assert state["status"] == "done" and len(live) == state["accepted"] >= 3 and stats.kept == len(live)
    assert {r["id"] for r in live} <= {s["id"] for s in seeds} and len({r["id"] for r in live}) == len(live)
    cursors = [int(r["_where"].rsplit(" ", 1)[1]) for r in live]
    assert cursors == sorted(cursors)
    resumed = list(read_records(f"{service}/v1/trajectories?job={job['id']}&after={cursors[1]}"))
    assert [r["id"] for r in resumed] == [r["id"] for r in live[2:]]
    assert [r["messages"] for r in resumed] == [r["messages"] for r in live[2:]]
    assert list(read_records(f"{service}/v1/trajectories?job={job['id']}&after={cursors[-1]}")) == []


# ------------------------------------------------------------------------------------ kill -9 and resume
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(tmp_path, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "synth", "serve", "--config=configs/synth.py", "--host", "127.0.0.1",
           "--port", str(port), f"--config.tools.cache_dir={tmp_path / 'cache'}",
           f"--config.service.store={tmp_path / 'jobs.sqlite'}", "--config.workflow.question_concurrency=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SYNTH_TOKEN": ""})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited with {proc.returncode}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("service did not start")


@pytest.mark.slow
def test_kill_9_three_times_loses_and_duplicates_nothing(tmp_path):
    topics = ["volcano", "photosynthesis", "Roman Empire", "jazz", "printing press", "Black Death", "Inca Empire",
              "plate tectonics", "honey bee", "steam engine"]
    seeds = [{"id": f"k{i}", "question": f"What is known about the {topics[i % 10]}, aspect {i // 10}?"}
             for i in range(50)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kills = []
    with open(tmp_path / "service.log", "wb") as log:
        proc = start_service(tmp_path, port, log)
        job = httpx.post(f"{url}/v1/jobs", json={"seeds": seeds}).json()["id"]
        for threshold in (5, 18, 32):
            while True:
                state = httpx.get(f"{url}/v1/jobs/{job}").json()
                if state["accepted"] + state["rejected"] >= threshold or state["status"] != "running":
                    break
                time.sleep(0.05)
            kills.append(state["pending"])
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_service(tmp_path, port, log)   # resumes the running job on start-up
        try:
            state = wait_done(url, job)
            lines = stream(url, job)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"kill -9 x3: pending at each kill {kills}; final {state['accepted']} accepted, {state['rejected']} "
          f"rejected, {len(lines)} trajectories streamed")
    assert all(p > 0 for p in kills), f"every kill should land mid-job: pending at kills {kills}"
    assert state["status"] == "done" and state["pending"] == 0
    assert state["accepted"] + state["rejected"] == 50
    ids = [l["record"]["id"] for l in lines]
    assert len(ids) == len(set(ids)) == state["accepted"], "one trajectory per accepted question"
    assert state["accepted"] >= 45
    for line in lines:
        assert protocol.validate(line["record"]["messages"][2]["content"], line["record"]["question"]) == []

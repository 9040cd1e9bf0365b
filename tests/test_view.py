"""The trajectory viewer (`python -m experiments.view`): pages rendered by headless Chromium from a real synth
output and an RL workdir written by the RL trainer's own writers; the lazy index on a 100k-record file."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from oresearcher import protocol

REPO = Path(__file__).resolve().parents[1]
RELEASED = REPO / "tests" / "fixtures" / "released-rl-72b-traces.jsonl"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SEEDS = [{"id": "bees", "question": "How do honey bees pollinate crops, and why does it matter?"},
         {"id": "tides", "question": "What causes ocean tides?"}]
REJECTED_SEED = {"id": "volcano", "question": "Why do volcanoes erupt?"}


# ------------------------------------------------------------------------------------------------ fixtures
def synth_output(tmp: Path) -> Path:
    """A real `python -m synth run` output (embedded preset): two accepted questions, then one more rejected by
    a second run into the same directory with an unreachable tool-call minimum."""
    seeds, out = tmp / "seeds.jsonl", tmp / "synth"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    base = [sys.executable, "-m", "synth", "run", "--config=configs/synth.py", f"--seeds={seeds}", f"--out={out}",
            f"--config.tools.cache_dir={tmp / 'cache'}", "--config.workflow.candidates=2"]
    for extra in ([], ["--config.workflow.min_tool_calls=1000"]):
        done = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        seeds.write_text(seeds.read_text() + json.dumps(REJECTED_SEED) + "\n")
    return out


def rl_workdir(tmp: Path, records: list[dict]) -> Path:
    """An RL workdir written by the trainer's own writers (episodes.jsonl, metrics.jsonl) for three steps whose
    episodes answer with the synth trajectories: the rewards are the real local parts and judge scores."""
    import numpy as np

    from oresearcher import metrics as metrics_lib
    from oresearcher.rl import rewards, train
    from oresearcher.rl.rollout import Episode, ToolCall

    workdir, cfg = tmp / "rl", rewards.RewardConfig()
    writer = metrics_lib.MetricsWriter(workdir, 3, progress=False)
    for step in (1, 2, 3):
        episodes, scored = [], []
        for group, record in enumerate(records):
            text = record["messages"][-1]["content"]
            cut = text[:len(text) * step // 3] if step < 3 else text     # earlier steps: cut-off answers
            calls = [ToolCall(s.tag, {}, True, "", 0.1) for s in protocol.parse(cut) if s.tag in protocol.TOOL_TAGS]
            n = protocol.estimate_tokens(cut)
            episodes.append(Episode(record["question"], group, 10, [0] * (10 + n), [False] * 10 + [True] * n,
                                    [0.0] * (10 + n), calls, "stop" if step == 3 else "length", cut))
            tool, fmt = rewards.local_parts(cut, cfg)
            base = record["meta"]["judge"]["overall"] if step == 3 else 0.0
            scored.append(rewards.Reward(rewards.composite(base, tool, fmt, cfg), base, tool, fmt, False,
                                         judge="heuristic"))
        totals = np.array([[r.total for r in scored]])
        adv = (totals - totals.mean()).reshape(-1)
        keep = np.ones((1, len(records)), bool)
        train._log_episodes(workdir / "episodes.jsonl", step, episodes, scored, adv, keep.reshape(-1))
        timings = {"time/generate": 1.0, "time/tools": 0.1, "time/judge": 0.1, "time/train": 1.0}
        writer.write(step, train._step_metrics(step, episodes, scored, keep, timings, {"train/loss": 0.1}))
    writer.close()
    return workdir


class Viewer:
    """`python -m experiments.view PATHS` on a free loopback port, stopped on exit."""

    def __init__(self, *paths: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.view", *map(str, paths),
                                      "--port", str(self.port)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                httpx.get(self.url + "/plot/999.png", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("the viewer did not answer within 60 s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stderr.close()


def chromium(url: str, tmp: Path, *extra: str) -> str:
    """The DOM of `url` after Chromium loaded it (images and scripts included)."""
    profile = tmp / f"profile-{time.monotonic_ns()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
           *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: "
                                    "apt-get install -y chromium); the viewer's pages are checked in a browser")


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
@needs_chromium
def test_pages_in_chromium(tmp_path):
    synth = synth_output(tmp_path)
    records = [json.loads(line) for line in (synth / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["bees", "tides"]
    rl = rl_workdir(tmp_path, records)
    with Viewer(synth, rl) as viewer:
        index = chromium(viewer.url + "/", tmp_path)
        for seed in SEEDS + [REJECTED_SEED]:
            assert seed["question"] in index
        assert re.search(r'class="cat rejected">rejected</span> 2 rejection\(s\); too_few_tool_calls', index)
        # the RL plot is an image the browser decoded (onload set data-loaded to its width)
        assert re.search(r'<img id="plot-1" src="/plot/1.png"[^>]*data-loaded="\d{3,}"', index), index[:3000]
        assert httpx.get(viewer.url + "/plot/1.png").content.startswith(b"\x89PNG\r\n\x1a\n")
        assert index.count('class="cat kept"') == 6     # 3 steps x 2 episodes

        filtered = chromium(viewer.url + "/?q=TIDES&outcome=accepted", tmp_path)
        assert SEEDS[1]["question"] in filtered and SEEDS[0]["question"] not in filtered

        record = records[0]
        text = record["messages"][-1]["content"]
        dom = chromium(viewer.url + "/t/0.0.0", tmp_path,
                       "--window-size=1280,1600", f"--screenshot={tmp_path / 'trace.png'}")
        assert (tmp_path / "trace.png").read_bytes().startswith(b"\x89PNG")
        observations = sum(1 for s in protocol.parse(text) if s.tag == "observation")
        assert observations >= 5
        assert len(re.findall(r'<details class="obs" id="obs-\d+"', dom)) == observations
        report = dom[dom.index('id="report"'):]
        references = protocol.parse_references(record["report"])
        for n in set(protocol.cited_numbers(record["report"])):
            url = dict((k, u) for k, u, _ in references)[n]
            assert f'class="cite" href="{url}"' in report, (n, url)   # linked, and read in an observation
        assert 'class="cite unobserved"' not in report
        assert re.search(r'<a class="obs-link" href="#obs-\d+"', report)
        assert '<mark class="cited">' + references[0][1] + "</mark>" in dom   # the URL, where it was read
        for part in ("subtask 1", "think", "plan", "sub-report", "final report"):
            assert f'<span class="tag">{part}' in dom
        assert "not_selected" in dom                    # the funnel's other candidate, beside the trace
        assert "same question elsewhere" in dom and "step 3 group 0" in dom   # the policy's episodes of it
        assert "comprehensiveness" in dom               # the judge's scores

        episode = httpx.get(viewer.url + "/t/1.0.5").text
        assert "reward/base" in episode and "advantage" in episode and 'id="report"' in episode
        rejected = httpx.get(viewer.url + "/t/0.1.2").text
        assert "too_few_tool_calls: " in rejected and "no trajectory stored" in rejected


def test_released_traces_render(tmp_path):
    """The released model's traces (missing openers, a report in another language): every citation resolved,
    quirks marked; unobserved citations marked as such."""
    from fastapi.testclient import TestClient

    from experiments.view.app import create_app
    from experiments.view.sources import Catalog

    client = TestClient(create_app(Catalog([RELEASED])))
    index = client.get("/").text
    assert "收集整理目前中国9阶层" in index and index.count('href="/t/0.0.') == 3
    for line, raw in enumerate(RELEASED.read_text().splitlines()):
        row = json.loads(raw)
        dom = client.get(f"/t/0.0.{line}").text
        text = row["current_answer"]
        observations = [s.body for s in protocol.parse(text) if s.tag == "observation"]
        assert dom.count('<details class="obs"') == len(observations)
        report = protocol.extract_report(text)
        urls = dict((n, u) for n, u, _ in protocol.parse_references(report))
        section = dom[dom.index('id="report"'):]
        for n in set(protocol.cited_numbers(report)) & set(urls):
            seen = any(urls[n] in o for o in observations)
            cls = "cite" if seen else "cite unobserved"
            assert f'class="{cls}" href="{urls[n]}"' in section.replace("&amp;", "&"), (line, n)
    assert "&lt;subtask_answer&gt; missing" in "".join(client.get(f"/t/0.0.{i}").text for i in range(3))


def test_run_agent_output_beside_the_released_traces(tmp_path):
    """A run_agent output directory written by run_agent's own writers (the released traces as its episodes)
    viewed beside the released file: each record is listed once, with its scores; the same question in the
    other source is linked from the trace."""
    import asyncio

    from fastapi.testclient import TestClient

    from experiments import run_agent
    from experiments.view.app import create_app
    from experiments.view.sources import Catalog

    rows = [json.loads(line) for line in RELEASED.read_text().splitlines()]
    episodes = [run_agent.Episode(str(r["id"]), r["prompt"], protocol.system_prompt(),
                                  pieces=[("model", r["current_answer"])], turns=12, stop_reason="final report")
                for r in rows]
    questions = [{"id": str(r["id"]), "prompt": r["prompt"]} for r in rows]
    scores = asyncio.run(run_agent.score_episodes(episodes, questions))
    run_agent.write_outputs(tmp_path / "agent", episodes, questions, "o-researcher-72b-rl", scores)

    client = TestClient(create_app(Catalog([RELEASED, tmp_path / "agent"])))
    index = client.get("/", params={"outcome": "report"}).text
    assert index.count('href="/t/1.0.') == 3 and "stop: final report" in index
    page = client.get("/t/1.0.2").text
    assert rows[2]["prompt"][:40] in page and "turns" in page and "R_tool" in page
    assert 'href="/t/0.0.2"' in page                            # the same question in the released file
    assert 'href="/compare?k=1.0.2&amp;k=0.0.2"' in page
    both = client.get("/compare", params={"k": ["1.0.2", "0.0.2"]}).text
    assert both.count('<div class="col">') == 2 and 'id="c0-report"' in both and 'id="c1-report"' in both
    assert 'href="#c1-obs-' in both and 'href="#obs-' not in both   # links stay inside their column
    assert client.get("/compare", params={"k": ["9.9.9"]}).status_code == 404
    for bad in ("0.0.-1", "0.0.3", "x", "0.5.0"):
        missing = client.get(f"/t/{bad}")
        assert missing.status_code == 404 and "trace keys are &lt;source&gt;.&lt;part&gt;.&lt;line&gt;" in missing.text


def test_citation_spans():
    text = "as shown [1], [2, 4-5] and [3](https://x.org) but not [x]"
    assert protocol.citation_spans(text) == [(9, 12, [1]), (14, 22, [2, 4, 5])]
    assert protocol.cited_numbers(text) == [1, 2, 4, 5]


def test_lazy_index_of_100k_records(tmp_path):
    """A 100k-line file: the first page comes from the first block of the scan and parses only its rows; a
    record near the end is found by its offset."""
    from fastapi.testclient import TestClient

    from experiments.view.app import create_app
    from experiments.view.sources import Catalog

    path = tmp_path / "episodes-like.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"question number {i}", "article": f"report {i} [1]\n"
                                "[1]. https://example.org/" + str(i) + " - a page"}) + "\n")
    catalog = Catalog([path])
    client = TestClient(create_app(catalog))
    page = client.get("/").text
    assert page.count('href="/t/0.0.') == 100 and "question number 99<" in page
    assert len(catalog._summaries) == 100                       # only the listed rows were parsed
    assert 'href="/?q=&amp;outcome=&amp;start=0.0.100"' in page
    assert catalog.sources[0].parts[0].file.wait_all() == 100_000
    last = client.get("/t/0.0.99999").text
    assert "question number 99999" in last and 'href="https://example.org/99999"' in last
    assert 'class="cite unobserved"' in last                    # no trajectory: nothing was observed
    found = client.get("/", params={"q": "QUESTION NUMBER 77777"}).text
    assert found.count('href="/t/0.0.') == 1 and "/t/0.0.77777" in found


def test_a_growing_file(tmp_path):
    """A file still being written (an RL run appending episodes): appended lines appear on refresh, a half-
    written last line does not until it is whole, a file rewritten shorter is indexed again."""
    from experiments.view.jsonl import JsonlFile

    path = tmp_path / "episodes.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    f = JsonlFile(path)
    assert f.wait_all() == 2 and f.record(1) == {"a": 2}
    with open(path, "a") as out:
        out.write('{"a": 3}\n{"a": ')
    f.refresh()
    assert f.wait_all() == 3 and f.record(2) == {"a": 3}
    with open(path, "a") as out:
        out.write('4}')
    f.refresh()
    assert f.wait_all() == 4 and f.record(3) == {"a": 4}
    path.write_text('{"b": 1}\n')
    f.refresh()
    assert f.wait_all() == 1 and f.record(0) == {"b": 1}
    path.write_text('{"c": 1}\n{"c": 2}\n')                     # rewritten longer in place
    f.refresh()
    assert f.wait_all() == 2 and f.record(0) == {"c": 1}
    (tmp_path / "new.jsonl").write_text('{"d": 1}\n{"d": 2}\n{"d": 3}\n')
    os.replace(tmp_path / "new.jsonl", path)                      # replaced, as synth writes its outputs
    f.refresh()
    assert f.wait_all() == 3 and f.record(0) == {"d": 1}
    with pytest.raises(IndexError, match="no line 4"):
        f.raw(3)


def test_bad_paths_are_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.view", str(tmp_path / "missing")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "missing: no such file or directory" in done.stderr
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "experiments.view", str(tmp_path / "empty")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds none of trajectories.jsonl" in done.stderr

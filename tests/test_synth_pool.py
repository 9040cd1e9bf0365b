"""synth.pool: the funnel over worker processes gives the records one process gives; a killed worker is replaced
and its questions are asked again; the CLI's `workflow.processes` runs through it."""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synth.config import load_config
from synth.funnel import Synthesizer, run_async
from synth.pool import ProcessPool

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What are the key facts about volcanic eruptions?", "How did the printing press change Europe?",
             "What is photosynthesis?", "Why did the Roman Empire fall?", "How do honey bees pollinate plants?"]


def without_timings(record: dict) -> dict:
    meta = {k: v for k, v in record["meta"].items() if k not in ("timings",)}
    return {**record, "meta": meta}


def test_pool_records_equal_in_process_records(tmp_path):
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"), "workflow.candidates": 2})

    async def in_process():
        synth = Synthesizer.from_config(cfg)
        try:
            return await asyncio.gather(*(synth.synthesize(q, f"q{i}") for i, q in enumerate(QUESTIONS)))
        finally:
            await synth.aclose()

    async def pooled():
        pool = await ProcessPool(cfg, processes=2).start()
        try:
            assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
            return await asyncio.gather(*(pool.synthesize(q, f"q{i}") for i, q in enumerate(QUESTIONS)))
        finally:
            await pool.aclose()

    ours, theirs = run_async(in_process()), run_async(pooled())
    assert all(o.record is not None for o in ours)
    assert [without_timings(o.record) for o in ours] == [without_timings(o.record) for o in theirs]
    assert [o.rejections for o in ours] == [o.rejections for o in theirs]


def test_killed_worker_is_replaced_and_its_question_asked_again(tmp_path):
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache"), "workflow.candidates": 1})

    async def main():
        pool = await ProcessPool(cfg, processes=2).start()
        try:
            task = asyncio.ensure_future(pool.synthesize(QUESTIONS[0], "q0"))
            while not any(w.waiting for w in pool.workers):   # until the question is with a worker
                await asyncio.sleep(0.001)
            owner = next(w for w in pool.workers if w.waiting)
            os.kill(owner.process.pid, signal.SIGKILL)
            outcome = await task
            return owner.process.pid, outcome, pool.pids
        finally:
            await pool.aclose()

    killed, outcome, pids = run_async(main())
    assert outcome.record is not None and outcome.record["question"] == QUESTIONS[0]
    assert killed not in pids and len(pids) == 2        # replaced


def test_cli_with_two_processes_writes_what_one_process_writes(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    outs = {}
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        done = subprocess.run([sys.executable, "-m", "synth", "run", f"--seeds={seeds}", f"--out={out}",
                               "--no-progress", f"--config.tools.cache_dir={tmp_path / 'cache'}",
                               f"--config.workflow.processes={processes}"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[processes] = sorted((json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()),
                                 key=lambda r: r["id"])
    assert len(outs[1]) == len(QUESTIONS)
    assert [without_timings(r) for r in outs[1]] == [without_timings(r) for r in outs[2]]


def test_bad_processes_value_is_an_error_naming_the_key(tmp_path):
    cfg = load_config("configs/synth.py", {"tools.cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ValueError, match="workflow.processes"):
        ProcessPool(cfg, processes=-1)

"""Synth-only mode: `python -m synth run --config=configs/synth.py --seeds=FILE --out=DIR [--array-record]`.

Reads the seeds (JSONL, one {"id"?, "question"} per line; a bad line is reported by number and skipped), keeps
its state in DIR/state.sqlite (the same durable store as the service, so re-running continues where it stopped
and never duplicates a trajectory), and writes
  DIR/trajectories.jsonl    accepted records (Interface 2), in acceptance order  (+ trajectories.array_record)
  DIR/rejected.jsonl        {"id", "question", "accepted", "reasons"} for every question with a rejection
  DIR/summary.json          accepted, rejected, rejections per reason, seed errors, tokens, cost, wall time
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import pathlib
import re
import sys
import time

from synth.funnel import Synthesizer, run_job
from synth.store import Store


def read_seeds(path: str, max_chars: int) -> tuple[list[dict], list[str]]:
    """(seeds, errors): every line that is not a JSON object with a non-empty string "question" of at most
    max_chars characters becomes an error naming its line number and the fix."""
    seeds, errors = [], []
    name = pathlib.Path(path).name
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                errors.append(f"{where}: not valid JSON ({error.msg} at column {error.colno}); write one JSON "
                              "object per line")
                continue
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
                errors.append(f"{where}: missing 'question' (a non-empty string); e.g. "
                              '{"id": "q1", "question": "..."}')
                continue
            if len(item["question"]) > max_chars:
                errors.append(f"{where}: 'question' has {len(item['question'])} characters, more than "
                              f"{max_chars} (service.max_question_chars); shorten it")
                continue
            seeds.append({"id": str(item.get("id") or f"line{number}"), "question": item["question"].strip()})
    return seeds, errors


def reason_name(reason: str) -> str:
    """'candidate 2: too_few_tool_calls: 3 < 5' -> 'too_few_tool_calls'."""
    return re.sub(r"^candidate \d+:\s*", "", reason).split(":", 1)[0].strip()


def _write_atomic(path: pathlib.Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def export(store: Store, job_id: str, out: pathlib.Path, array_record: bool) -> list[dict]:
    records = [r for _, r in store.trajectories(job_id, 0, limit=10**9)]
    _write_atomic(out / "trajectories.jsonl", [json.dumps(r, ensure_ascii=False) + "\n" for r in records])
    if array_record:
        from array_record.python.array_record_module import ArrayRecordWriter
        writer = ArrayRecordWriter(str(out / "trajectories.array_record"), "group_size:1")
        for r in records:
            writer.write(json.dumps(r, ensure_ascii=False).encode())
        writer.close()
    return records


def run_seeds(cfg, seeds_path: str, out_dir: str, *, progress: bool = True, array_record: bool = False) -> int:
    start = time.perf_counter()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        seeds, errors = read_seeds(seeds_path, cfg.service.max_question_chars)
    except OSError as error:
        print(f"error: --seeds={seeds_path}: {error.strerror}", file=sys.stderr)
        return 2
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    store = Store(out / "state.sqlite")
    # The job is named by its seeds: the same file continues the same job, another file starts a new one.
    job_id = "run-" + hashlib.sha256(json.dumps(seeds, sort_keys=True).encode()).hexdigest()[:16]
    store.create_job(seeds, job_id=job_id)
    if store.job(job_id)["status"] == "cancelled":
        store.set_status(job_id, "running")
    job = store.job(job_id)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=job["total"], initial=job["total"] - job["pending"], unit="q", desc="synth",
                   file=sys.stderr)
    counts = collections.Counter()

    def tick(accepted: bool) -> None:
        counts["accepted" if accepted else "rejected"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(accepted=counts["accepted"], rejected=counts["rejected"])

    async def main():
        synth = Synthesizer.from_config(cfg)
        try:
            await run_job(store, job_id, synth, concurrency=cfg.workflow.question_concurrency, progress=tick)
        finally:
            await synth.aclose()

    asyncio.run(main())
    if bar is not None:
        bar.close()

    records = export(store, job_id, out, array_record)
    by_question = collections.defaultdict(list)
    for idx, qid, question, state, reason in store.rejection_rows(job_id):
        by_question[(idx, qid, question, state)].append(reason)
    _write_atomic(out / "rejected.jsonl", [
        json.dumps({"id": qid, "question": q, "accepted": state == "accepted", "reasons": reasons},
                   ensure_ascii=False) + "\n" for (idx, qid, q, state), reasons in sorted(by_question.items())])
    per_reason = collections.Counter(reason_name(r) for rs in by_question.values() for r in rs)
    final = store.job(job_id)
    summary = {
        "job": job_id, "questions": final["total"], "accepted": final["accepted"], "rejected": final["rejected"],
        "pending": final["pending"], "rejections_per_reason": dict(per_reason),
        "seed_errors": errors,
        "tokens": {"trajectory_estimate": sum(r["meta"]["tokens"]["trajectory_estimate"] for r in records),
                   "prompt": sum(r["meta"]["tokens"]["prompt"] for r in records),
                   "completion": sum(r["meta"]["tokens"]["completion"] for r in records)},
        "cost": round(sum(r["meta"]["llm"]["cost"] for r in records), 6),
        "llm_retries": sum(r["meta"]["retries"] for r in records),
        "tool_errors": sum(len(r["meta"]["tool_errors"]) for r in records),
        "wall_time_s": round(time.perf_counter() - start, 3),
        "config_hash": records[0]["meta"]["config_hash"] if records else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    store.close()
    print(f"synth: {summary['accepted']} accepted, {summary['rejected']} rejected, {len(errors)} bad seed "
          f"line(s), {summary['wall_time_s']:.1f}s -> {out}", file=sys.stderr)
    return 0 if seeds else 1

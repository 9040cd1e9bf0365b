"""Synth-only mode: `python -m synth run --config=configs/synth.py --seeds=FILE --out=DIR [--array-record]`.

Reads the seeds (JSONL, one {"id"?, "question"} per line; a bad line is reported by number and skipped, the
others run) and keeps its state in DIR/state.sqlite, the same durable store as the service. One output
directory is one job: running again with the same --out continues where the last run stopped (after a crash,
Ctrl-C or kill), adds the seed lines it has not seen (a seed is its id, or its question when it has none), and
never synthesizes a seed twice. It writes
  DIR/trajectories.jsonl    accepted records (Interface 2), in acceptance order  (+ trajectories.array_record)
  DIR/rejected.jsonl        {"id", "question", "accepted", "reasons"} for every question with a rejection
  DIR/summary.json          accepted, rejected, rejections per reason, seed errors, tokens, cost, wall time
  DIR/role_chats.jsonl      with --config.workflow.role_chats=True: the teacher's answers as openai-teacher role
                            chats, SFT records that teach a model to serve as the `local` teacher (teachers/roles.py)
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import sqlite3
import sys
import time

from synth.checks import check_seeds
from synth.funnel import run_async, run_job
from synth.pool import make_synthesizer
from synth.store import Store


def read_seeds(path: str, max_chars: int) -> tuple[list[dict], list[str]]:
    """(seeds, errors): every line that is not UTF-8, not JSON, or not a seed as synth.checks.check_seeds wants
    it (the checks of the HTTP service) becomes an error naming its line number and the fix; the other lines
    are kept. A seed without an "id" is named by its question, so inserting or reordering lines never renames a
    seed; a repeated seed is kept once, an id given to two different questions is an error."""
    name = pathlib.Path(path).name
    items, errors, numbers = [], [], {}
    with open(path, "rb") as f:   # bytes: a line that is not UTF-8 is reported, never silently altered
        for number, raw in enumerate(f, 1):
            where = f"{name} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                errors.append((number, f"{where}: not UTF-8 (byte 0x{raw[error.start]:02x} at byte "
                                       f"{error.start + 1}); save the file as UTF-8"))
                continue
            if not line.strip():
                continue
            try:
                items.append((where, json.loads(line)))
                numbers[where] = number
            except json.JSONDecodeError as error:
                errors.append((number, f"{where}: not valid JSON ({error.msg} at column {error.colno}); write one "
                                       "JSON object per line"))
    seeds, problems = check_seeds(items, max_chars)
    errors += [(numbers[where], f"{where}: {problem}") for where, _, problem in problems]
    return seeds, [message for _, message in sorted(errors, key=lambda e: e[0])]


def reason_name(reason: str) -> str:
    """'candidate 2: too_few_tool_calls: 3 < 5' -> 'too_few_tool_calls'."""
    return re.sub(r"^candidate \d+:\s*", "", reason).split(":", 1)[0].strip()


def _write_atomic(path: pathlib.Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def role_chat_records(record: dict) -> list[dict]:
    """A record's role chats (workflow.role_chats) as SFT records: planner, one researcher chat per sub-question,
    summarizer, each {"id": "<question id>/<role>", "messages": [...]}."""
    return [{"id": f"{record['id']}/{c['role']}", "messages": c["messages"]} for c in record.get("role_chats", [])]


def export(store: Store, job_id: str, out: pathlib.Path, array_record: bool) -> list[dict]:
    records = [r for _, r in store.trajectories(job_id, 0, limit=10**9)]
    chats = [c for r in records for c in role_chat_records(r)]
    records = [{k: v for k, v in r.items() if k != "role_chats"} for r in records]
    _write_atomic(out / "trajectories.jsonl", [json.dumps(r, ensure_ascii=False) + "\n" for r in records])
    if chats:
        _write_atomic(out / "role_chats.jsonl", [json.dumps(c, ensure_ascii=False) + "\n" for c in chats])
    if array_record:
        from array_record.python.array_record_module import ArrayRecordWriter
        writer = ArrayRecordWriter(str(out / "trajectories.array_record"), "group_size:1")
        for r in records:
            writer.write(json.dumps(r, ensure_ascii=False).encode())
        writer.close()
    return records


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


JOB = "run"   # one job per output directory: re-running adds the new seed lines and continues the unfinished ones


def run_seeds(cfg, seeds_path: str, out_dir: str, *, progress: bool = True, array_record: bool = False) -> int:
    """Synthesize every seed of `seeds_path` into `out_dir` (see the module docstring). Exit status: 0 done,
    1 nothing to do (no usable seed line), 2 bad input (message names it), 130 interrupted (re-run continues)."""
    start = time.perf_counter()
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        return _fail(f"--out={out_dir} is a file; give a directory (it is created if missing)")
    try:
        seeds, errors = read_seeds(seeds_path, cfg.service.max_question_chars)
    except IsADirectoryError:
        return _fail(f"--seeds={seeds_path} is a directory; give a JSONL file with one "
                     '{"id": ..., "question": ...} object per line')
    except OSError as error:
        return _fail(f"--seeds={seeds_path}: {error.strerror}; give a JSONL file with one "
                     '{"id": ..., "question": ...} object per line')
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
        store = Store(out / "state.sqlite")
    except (OSError, sqlite3.Error) as error:
        return _fail(f"--out={out_dir}: cannot write there ({error}); choose a writable directory")
    try:
        synth = make_synthesizer(cfg)
    except (ValueError, KeyError, FileNotFoundError) as error:
        return _fail(f"--config: {error}")
    if store.job(JOB) is None:
        store.create_job([], job_id=JOB)
    added, clashes = store.extend_job(JOB, seeds)
    for clash in clashes:
        errors.append(f"{pathlib.Path(seeds_path).name}: {clash} (an earlier run into --out={out_dir} used it)")
        print(f"error: {errors[-1]}", file=sys.stderr)
    if store.job(JOB)["status"] == "cancelled":
        store.set_status(JOB, "running")
    job = store.job(JOB)
    done_before = job["total"] - job["pending"]
    if done_before:
        print(f"synth: continuing in {out}: {done_before} question(s) already decided, {job['pending']} to go "
              f"({added} new)", file=sys.stderr)
    bar = None
    if progress and job["pending"]:
        from tqdm import tqdm
        bar = tqdm(total=job["total"], initial=done_before, unit="q", desc="synth", file=sys.stderr,
                   dynamic_ncols=True)
    counts = collections.Counter()

    def tick(accepted: bool) -> None:
        counts["accepted" if accepted else "rejected"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(accepted=job["accepted"] + counts["accepted"],
                            rejected=job["rejected"] + counts["rejected"], refresh=False)

    async def main():
        try:
            await run_job(store, JOB, synth, concurrency=cfg.workflow.question_concurrency, progress=tick)
        finally:
            await synth.aclose()

    interrupted = False
    try:
        run_async(main())
    except KeyboardInterrupt:
        interrupted = True
    if bar is not None:
        bar.close()
    summary = write_outputs(store, JOB, out, array_record, errors, time.perf_counter() - start)
    store.close()
    if interrupted:
        print(f"synth: interrupted after {summary['accepted']} accepted, {summary['pending']} pending; the outputs "
              f"so far are in {out}; run the same command again to continue", file=sys.stderr)
        return 130
    print(f"synth: {summary['accepted']} accepted, {summary['rejected']} rejected, {len(errors)} bad seed "
          f"line(s), {summary['wall_time_s']:.1f}s -> {out}/trajectories.jsonl, rejected.jsonl, summary.json",
          file=sys.stderr)
    if not summary["questions"]:
        return _fail(f"--seeds={seeds_path}: no usable seed line; fix the lines named above", 1)
    return 0


def write_outputs(store: Store, job_id: str, out: pathlib.Path, array_record: bool, errors: list[str],
                  seconds: float) -> dict:
    """trajectories.jsonl (+ .array_record), rejected.jsonl and summary.json from the store; returns the summary."""
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
        "wall_time_s": round(seconds, 3),
        "config_hash": records[-1]["meta"]["config_hash"] if records else None,
    }
    _write_atomic(out / "summary.json", [json.dumps(summary, indent=2, ensure_ascii=False) + "\n"])
    return summary

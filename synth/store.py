"""The durable job store (SQLite, WAL): jobs, per-question state, accepted trajectories and rejections.

A killed server loses nothing: every accepted trajectory is committed together with its question's state in one
transaction, and `UNIQUE(job, idx)` on trajectories makes a re-run of the same question (after a crash between
the work and the commit) a no-op, so there is exactly one accepted trajectory per question. On restart every
job whose status is still "running" has its "pending" questions run again.

Tables
  jobs(id, created, status running|done|cancelled|failed, config JSON overrides, total, error)
       error: why a job failed (its synthesizer could not be built again on start-up), else NULL
  questions(job, idx, qid, question, state pending|accepted|rejected, reasons JSON)
  trajectories(cursor INTEGER PRIMARY KEY AUTOINCREMENT, job, idx, record JSON)  -- cursor grows monotonically
  rejections(job, idx, reason)  -- every rejected candidate and every rejected question, with its reason
"""
from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
import time
import uuid

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, status TEXT, overrides TEXT, total INTEGER,
    error TEXT);
CREATE TABLE IF NOT EXISTS questions (job TEXT, idx INTEGER, qid TEXT, question TEXT, state TEXT,
    reasons TEXT, PRIMARY KEY (job, idx));
CREATE TABLE IF NOT EXISTS trajectories (cursor INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT, idx INTEGER,
    record TEXT, UNIQUE (job, idx));
CREATE TABLE IF NOT EXISTS rejections (job TEXT, idx INTEGER, reason TEXT);
CREATE INDEX IF NOT EXISTS questions_state ON questions (job, state);
CREATE INDEX IF NOT EXISTS rejections_job ON rejections (job, idx);
"""


class Store:
    """One SQLite file; safe to use from the event loop thread and worker threads (one lock, short writes)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable across process kills
        self._db.executescript(SCHEMA)
        if "error" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN error TEXT")   # a store written before the column
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------------------------------ jobs
    def create_job(self, seeds: list[dict], overrides: dict | None = None, job_id: str | None = None) -> str:
        """seeds: [{"id"?, "question"}]; returns the job id. An existing job_id keeps its questions (resume)."""
        job_id = job_id or uuid.uuid4().hex[:16]
        if self._read("SELECT 1 FROM jobs WHERE id=?", (job_id,)):
            return job_id
        statements = [("INSERT INTO jobs (id, created, status, overrides, total) VALUES (?,?,?,?,?)",
                       (job_id, time.time(), "running", json.dumps(overrides or {}), len(seeds)))]
        for i, seed in enumerate(seeds):
            statements.append(("INSERT INTO questions VALUES (?,?,?,?,?,?)",
                               (job_id, i, str(seed.get("id") or f"q{i}"), seed["question"], "pending", "[]")))
        self._write(statements)
        return job_id

    def extend_job(self, job_id: str, seeds: list[dict]) -> tuple[int, list[str]]:
        """Add to an existing job the seeds it does not hold yet (same id and question = the same seed) and mark
        it running again. Returns (seeds added, errors): a seed whose id the job already holds with another
        question is refused, naming the id."""
        known = {qid: question for qid, question in self._read("SELECT qid, question FROM questions WHERE job=?",
                                                                (job_id,))}
        start = self._read("SELECT COALESCE(MAX(idx) + 1, 0) FROM questions WHERE job=?", (job_id,))[0][0]
        statements, errors, added = [], [], 0
        for seed in seeds:
            qid = str(seed.get("id") or "")
            if qid in known:
                if known[qid] != seed["question"]:
                    errors.append(f"id {qid!r} is already used in this job for another question; give the new "
                                  "question its own id")
                continue
            known[qid] = seed["question"]
            statements.append(("INSERT INTO questions VALUES (?,?,?,?,?,?)",
                               (job_id, start + added, qid, seed["question"], "pending", "[]")))
            added += 1
        if added:
            statements.append(("UPDATE jobs SET total=total+?, status='running' WHERE id=?", (added, job_id)))
            self._write(statements)
        return added, errors

    def job(self, job_id: str) -> dict | None:
        rows = self._read("SELECT id, created, status, overrides, total, error FROM jobs WHERE id=?", (job_id,))
        if not rows:
            return None
        jid, created, status, overrides, total, error = rows[0]
        counts = dict(self._read("SELECT state, COUNT(*) FROM questions WHERE job=? GROUP BY state", (job_id,)))
        return {"id": jid, "created": created, "status": status, "overrides": json.loads(overrides),
                "total": total, "pending": counts.get("pending", 0), "accepted": counts.get("accepted", 0),
                "rejected": counts.get("rejected", 0), "error": error}

    def jobs(self, status: str | None = None) -> list[str]:
        if status:
            return [r[0] for r in self._read("SELECT id FROM jobs WHERE status=? ORDER BY created", (status,))]
        return [r[0] for r in self._read("SELECT id FROM jobs ORDER BY created")]

    def set_status(self, job_id: str, status: str) -> None:
        self._write([("UPDATE jobs SET status=? WHERE id=?", (status, job_id))])

    def fail(self, job_id: str, reason: str) -> None:
        """Mark a job failed with its reason: it is not resumed again; its accepted trajectories stay."""
        self._write([("UPDATE jobs SET status='failed', error=? WHERE id=?", (reason, job_id))])

    def pending(self, job_id: str) -> list[tuple[int, str, str]]:
        """[(idx, qid, question)] of the questions not yet decided."""
        return self._read("SELECT idx, qid, question FROM questions WHERE job=? AND state='pending' ORDER BY idx",
                          (job_id,))

    # ------------------------------------------------------------------------------------------ outcomes
    def accept(self, job_id: str, idx: int, record: dict, rejected_candidates: list[str] = ()) -> bool:
        """Store the accepted trajectory of question idx; False when it was already stored (a re-run)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("INSERT OR IGNORE INTO trajectories (job, idx, record) VALUES (?,?,?)",
                                       (job_id, idx, json.dumps(record, ensure_ascii=False)))
                inserted = cur.rowcount == 1
                if inserted:
                    self._db.executemany("INSERT INTO rejections VALUES (?,?,?)",
                                         [(job_id, idx, r) for r in rejected_candidates])
                    self._db.execute("UPDATE questions SET state='accepted' WHERE job=? AND idx=?", (job_id, idx))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted

    def reject(self, job_id: str, idx: int, reasons: list[str]) -> None:
        """Question idx produced no valid candidate; every candidate's reason is kept."""
        statements = [("INSERT INTO rejections VALUES (?,?,?)", (job_id, idx, r)) for r in reasons]
        statements.append(("UPDATE questions SET state='rejected', reasons=? WHERE job=? AND idx=? "
                           "AND state='pending'", (json.dumps(reasons), job_id, idx)))
        self._write(statements)

    def trajectories(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, dict]]:
        """[(cursor, record)] accepted after `after`, in cursor order."""
        rows = self._read("SELECT cursor, record FROM trajectories WHERE job=? AND cursor>? ORDER BY cursor "
                          "LIMIT ?", (job_id, after, limit))
        return [(c, json.loads(r)) for c, r in rows]

    def rejected_questions(self, job_id: str) -> list[dict]:
        rows = self._read("SELECT idx, qid, question, reasons FROM questions WHERE job=? AND state='rejected' "
                          "ORDER BY idx", (job_id,))
        return [{"index": i, "id": q, "question": text, "reasons": json.loads(r)} for i, q, text, r in rows]

    def rejection_reasons(self, job_id: str) -> list[str]:
        return [r[0] for r in self._read("SELECT reason FROM rejections WHERE job=?", (job_id,))]

    def rejection_rows(self, job_id: str) -> list[tuple[int, str, str, str, str]]:
        """[(idx, qid, question, state, reason)] for every recorded rejection of the job, by question."""
        return self._read("SELECT q.idx, q.qid, q.question, q.state, r.reason FROM rejections r JOIN questions q "
                          "ON q.job=r.job AND q.idx=r.idx WHERE r.job=? ORDER BY q.idx", (job_id,))

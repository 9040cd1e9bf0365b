"""A content-addressed persistent cache of tool results (searches, pages, summaries) in SQLite.

Synthesis, RL tool serving and evaluation all read and write the same file, so a page fetched while making
trajectories is not fetched again when the policy crawls it during RL or when the judge checks a citation.

Key = sha256 of the canonical JSON of (kind, backend, normalised args): the same request always maps to the same
row whatever process asks. Values are JSON. Only successes are stored; a failed fetch is retried next time.

Concurrency: SQLite in WAL mode lets many processes read while one writes; `busy_timeout` makes a writer wait
for the lock instead of failing. Inside one process, one connection guarded by a lock is shared by the threads
that `asyncio.to_thread` runs the queries on, so the event loop never blocks on disk. Identical requests that
are in flight at the same time in one process are computed once (`get_or_compute`), and the most recently used
entries are also kept in memory (as JSON text, so callers never share a mutable value), which saves the
thread hop and the disk read for the pages and searches that many concurrent researchers repeat.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_DIR = "~/.cache/oresearcher"
MEMORY_ENTRIES = 4096   # recently used values kept in memory per ToolCache


def cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The directory holding tool caches and indexes: `path`, else $ORESEARCHER_CACHE, else ~/.cache/oresearcher."""
    chosen = path or os.environ.get("ORESEARCHER_CACHE") or DEFAULT_DIR
    directory = pathlib.Path(chosen).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def normalise(args: Any) -> Any:
    """Canonical form of request arguments: strings stripped, dict keys sorted by json.dumps later."""
    if isinstance(args, str):
        return " ".join(args.split())
    if isinstance(args, dict):
        return {str(k): normalise(v) for k, v in args.items()}
    if isinstance(args, (list, tuple)):
        return [normalise(v) for v in args]
    return args


def cache_key(kind: str, backend: str, args: Any) -> str:
    """sha256 hex of the canonical JSON of (kind, backend, normalised args)."""
    canonical = json.dumps([kind, backend, normalise(args)], sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ToolCache:
    """Persistent key -> JSON value store. `ToolCache(None)` is a disabled cache (every lookup misses).

    Counters `hits` and `misses` count lookups made by this instance (for metrics and tests).
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else pathlib.Path(path).expanduser()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, asyncio.Future] = {}
        self._memory: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._db = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "backend TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL)")

    @classmethod
    def in_dir(cls, directory: str | os.PathLike | None = None) -> ToolCache:
        """The shared cache file `tools.sqlite` in `cache_dir(directory)`."""
        return cls(cache_dir(directory) / "tools.sqlite")

    # Synchronous core (runs on worker threads when called from async code).
    def get(self, kind: str, backend: str, args: Any) -> Any | None:
        if self._db is None:
            self.misses += 1
            return None
        key = cache_key(kind, backend, args)
        with self._lock:
            row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, row[0])
        return json.loads(row[0])

    def _remember(self, key: str, text: str) -> None:
        with self._lock:
            self._memory[key] = text
            self._memory.move_to_end(key)
            while len(self._memory) > MEMORY_ENTRIES:
                self._memory.popitem(last=False)

    def _recall(self, key: str) -> Any | None:
        """The value of `key` from memory (counted as a hit), None when it is not there."""
        with self._lock:
            text = self._memory.get(key)
            if text is None:
                return None
            self._memory.move_to_end(key)
            self.hits += 1
        return json.loads(text)

    def put(self, kind: str, backend: str, args: Any, value: Any) -> None:
        if self._db is None:
            return
        key = cache_key(kind, backend, args)
        text = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO entries (key, kind, backend, value, created) "
                             "VALUES (?, ?, ?, ?, ?)", (key, kind, backend, text, time.time()))
        self._remember(key, text)

    def __len__(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None

    # Async API.
    async def aget(self, kind: str, backend: str, args: Any) -> Any | None:
        return await asyncio.to_thread(self.get, kind, backend, args)

    async def aput(self, kind: str, backend: str, args: Any, value: Any) -> None:
        await asyncio.to_thread(self.put, kind, backend, args, value)

    async def get_or_compute(self, kind: str, backend: str, args: Any,
                             compute: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """(value, was_cached). Computes on a miss and stores the result; exceptions propagate, nothing stored.

        Concurrent calls with the same key share one computation (single flight), so 64 rollouts crawling the
        same page make one fetch.
        """
        key = cache_key(kind, backend, args)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        if self._db is not None:
            cached = self._recall(key)
            if cached is not None:
                return cached, True
        cached = await self.aget(kind, backend, args)
        if cached is not None:
            return cached, True
        pending = self._inflight.get(key)  # another task may have started while we read the disk
        if pending is not None:
            return await asyncio.shield(pending), True
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
            await self.aput(kind, backend, args, value)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else has to
            raise
        else:
            future.set_result(value)
        finally:
            self._inflight.pop(key, None)
        return value, False

"""A JSONL file read lazily: line offsets found by a background thread, records parsed only when asked for.

    f = JsonlFile(path)       # returns at once; a thread scans the file for newlines in 8 MiB blocks
    f.count()                 # lines indexed so far (grows while the scan runs); f.indexed: the scan is done
    f.wait_for(100)           # block until 100 lines are known (or the file has fewer)
    f.raw(i), f.record(i)     # line i as bytes / as a parsed JSON object (ValueError naming file and line)

A 100k-record trace file is gigabytes of JSON: parsing all of it to list it would take minutes, while finding
its newlines with numpy runs at memory speed and the first page needs only the first block. A file that grows
(an RL run writing episodes.jsonl) is scanned again from where the last scan stopped when `refresh()` sees it
longer; one that was rewritten (a resumed run dropped the steps after its checkpoint: the last bytes scanned
are no longer what they were) is scanned from the start.
"""
from __future__ import annotations

import array
import bisect
import json
import os
import threading
from pathlib import Path

import numpy as np

BLOCK = 8 << 20   # bytes read per step of the scan
READ = 1 << 20    # bytes read at once when walking lines in order
SEAL = 256        # bytes compared to tell an appended file from a rewritten one


class JsonlFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._ends = array.array("q")    # byte offset just past each complete line's "\n"
        self._scanned = 0                # bytes of the file the scan has looked at
        self._seal = b""                 # the last bytes scanned: if they changed, the file was rewritten
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._scanning = False
        self._handle = open(self.path, "rb")
        self.refresh()

    # ------------------------------------------------------------------------------------------ scanning
    @property
    def indexed(self) -> bool:
        """The scan has reached the end of the file (as long as it was when the scan last ran)."""
        return not self._scanning

    def refresh(self) -> None:
        """Start a scan of what was appended since the last one (of everything, if the file was rewritten or
        replaced: synth writes its outputs to a temporary file and renames it over the old one)."""
        stat = os.stat(self.path)
        with self._lock:
            if self._scanning:
                return
            replaced = (stat.st_dev, stat.st_ino) != _identity(self._handle)
            if replaced:
                self._handle.close()
                self._handle = open(self.path, "rb")
            size = stat.st_size
            if replaced or size < self._scanned or \
                    self._read(self._scanned - len(self._seal), len(self._seal)) != self._seal:
                self._ends = array.array("q")
                self._scanned = 0
                self._seal = b""
            if size == self._scanned:
                return
            self._scanning = True
            self._thread = threading.Thread(target=self._scan, args=(size,), daemon=True,
                                            name=f"index {self.path.name}")
            self._thread.start()

    def _scan(self, size: int) -> None:
        whole_tail, pos = False, 0
        try:
            with open(self.path, "rb") as f:
                pos = self._ends[-1] if len(self._ends) else 0
                f.seek(pos)
                while pos < size:
                    block = f.read(min(BLOCK, size - pos))
                    if not block:
                        break
                    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + (pos + 1)
                    with self._grew:
                        self._ends.extend(ends.tolist())
                        self._grew.notify_all()
                    pos += len(block)
                tail = pos - (self._ends[-1] if len(self._ends) else 0)
                whole_tail = bool(tail) and self._complete_tail(f, pos - tail, tail)
        finally:   # a file removed under the scan leaves what was indexed, never a scan that looks unfinished
            with self._grew:
                if whole_tail:
                    self._ends.append(pos)   # a last line without "\n" that is whole JSON counts as a line
                self._scanned = self._ends[-1] if len(self._ends) else 0
                self._seal = self._read(max(0, self._scanned - SEAL), min(SEAL, self._scanned))
                self._scanning = False
                self._grew.notify_all()

    @staticmethod
    def _complete_tail(f, start: int, length: int) -> bool:
        """A file may end without a newline; a writer may also be half-way through its last line."""
        f.seek(start)
        try:
            json.loads(f.read(length))
            return True
        except ValueError:
            return False

    def _read(self, start: int, length: int) -> bytes:
        """Bytes of the file (callers hold the lock: the handle is shared)."""
        self._handle.seek(start)
        return self._handle.read(length)

    def count(self) -> int:
        return len(self._ends)

    def wait_for(self, n: int, timeout: float = 30.0) -> int:
        """Lines indexed once at least `n` are known or the scan is done (or `timeout` seconds passed)."""
        with self._grew:
            self._grew.wait_for(lambda: len(self._ends) >= n or self.indexed, timeout)
            return len(self._ends)

    def wait_all(self, timeout: float = 600.0) -> int:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return len(self._ends)

    # ------------------------------------------------------------------------------------------ reading
    def raw(self, i: int) -> bytes:
        """Line i (0-based) without its newline."""
        if not 0 <= i < len(self._ends):
            raise IndexError(f"{self.path}: no line {i + 1} (it has {len(self._ends)} indexed so far)")
        start = self._ends[i - 1] if i else 0
        with self._lock:   # one shared handle: seek + read must not interleave between requests
            self._handle.seek(start)
            data = self._handle.read(self._ends[i] - start)
        return data.rstrip(b"\r\n")

    def lines(self, start: int, stop: int, needles: tuple[bytes, ...] = ()):
        """(i, line i without its newline) for start <= i < stop, read sequentially about 1 MiB at a time (a
        walk through a big file would otherwise pay a seek and a read per line). With `needles` (lowercased,
        see `needles`), only the lines that contain one, ignoring ASCII case: each block is searched whole, and
        after each block comes (j, None), j the first line not searched yet, so a caller can stop on time."""
        i = start
        while i < stop:
            begin = self._ends[i - 1] if i else 0
            j = max(i + 1, bisect.bisect_right(self._ends, begin + READ, i, stop))
            with self._lock:
                self._handle.seek(begin)
                data = self._handle.read(self._ends[j - 1] - begin)
            if needles:
                low, hits = data.lower(), set()
                for needle in needles:
                    at = low.find(needle)
                    while at >= 0:   # a JSON line holds no raw newline, so a match never spans two lines
                        hits.add(bisect.bisect_right(self._ends, begin + at, i, j))
                        at = low.find(needle, at + 1)
                wanted = sorted(hits)
            else:
                wanted = range(i, j)
            for k in wanted:
                yield k, data[(self._ends[k - 1] if k else 0) - begin:self._ends[k] - begin].rstrip(b"\r\n")
            if needles:
                yield j, None
            i = j

    def record(self, i: int, data: bytes | None = None) -> dict | None:
        """Line i as a JSON object (from `data` when the caller has read it already); None for a blank line."""
        data = self.raw(i) if data is None else data
        if not data.strip():
            return None
        try:
            row = json.loads(data)
        except ValueError as error:
            raise ValueError(f"{self.path} line {i + 1}: not JSON ({error}); the viewer shows JSONL files "
                             "with one JSON object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{self.path} line {i + 1}: a JSON {type(row).__name__}, not an object")
        return row

    def close(self) -> None:
        self._handle.close()


def needles(text: str) -> tuple[bytes, ...]:
    """`text` as it can appear inside a JSON string: written with ensure_ascii=False (every writer of ours) or
    with \\uXXXX escapes, quotes and newlines escaped either way."""
    text = text.lower()
    forms = {json.dumps(text, ensure_ascii=False)[1:-1].encode(), json.dumps(text)[1:-1].encode().lower()}
    return tuple(sorted(forms))


def _identity(handle) -> tuple[int, int]:
    stat = os.fstat(handle.fileno())
    return stat.st_dev, stat.st_ino

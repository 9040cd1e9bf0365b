"""Trajectory records (DESIGN contract 2) from JSONL files, ArrayRecord files and the synth HTTP stream.

    for record in read_records("trajectories.jsonl", on_bad_record="skip", stats=stats): ...
    read_records("data.array_record")                               # one JSON record per ArrayRecord entry
    read_records("http://127.0.0.1:8000/v1/trajectories?job=J")     # NDJSON, resumed by cursor on disconnect

A record is bad when its line is not UTF-8 or not JSON, it is not an object, it has no `messages` list with an assistant
message, or the assistant text has unclosed or unopened protocol tags (`oresearcher.protocol.parse`). With
on_bad_record="skip" it is counted (per reason) and skipped; with "stop" reading stops with a `BadRecord` that
names the file, the line and the reason. Over-long trajectories are found at tokenisation (`masks.py`) and go
through the same `RecordStats`.

The synth stream: `GET <base>/v1/trajectories?job=J&after=CURSOR` answers NDJSON, one line per accepted
trajectory, each either the record itself with a top-level "cursor" or {"cursor": c, "record": {...}}; a line
{"cursor": c, "done": true} (optional) ends it. A dropped connection is resumed from the last cursor seen.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from oresearcher import protocol

log = logging.getLogger(__name__)
ON_BAD_RECORD = ("skip", "stop")


class BadRecord(ValueError):
    """A record that can not be trained on. where: "file line N" (or "url cursor C"); reason: "name: detail"."""

    def __init__(self, where: str, reason: str, stats: RecordStats | None = None):
        self.where, self.reason = where, reason
        counts = f" ({stats.summary()})" if stats is not None else ""
        super().__init__(f"{where}: {reason}{counts}. Fix or remove the record, or set on_bad_record='skip'.")

    @property
    def name(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclasses.dataclass
class RecordStats:
    """Counts of a read: records kept, and records skipped per reason name (the first example of each kept)."""
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def bad(self, error: BadRecord, on_bad_record: str) -> None:
        """Count `error`; raise it when on_bad_record is "stop"."""
        if on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record={on_bad_record!r}: use one of {ON_BAD_RECORD}")
        self.skipped[error.name] += 1
        self.examples.setdefault(error.name, f"{error.where}: {error.reason}")
        if on_bad_record == "stop":
            raise BadRecord(error.where, error.reason, self)
        log.warning("skipping %s: %s", error.where, error.reason)

    def summary(self) -> str:
        parts = ", ".join(f"{name}: {n}" for name, n in sorted(self.skipped.items()))
        return f"{self.kept} kept, {sum(self.skipped.values())} skipped" + (f" ({parts})" if parts else "")


def check_record(record, where: str, check_tags: bool = True) -> dict:
    """The record if it is a usable trajectory, else raises BadRecord naming the problem."""
    if not isinstance(record, dict):
        raise BadRecord(where, f"not_an_object: a JSON {type(record).__name__}, expected an object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRecord(where, "no_messages: missing 'messages' (a list of {role, content})")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRecord(where, f"bad_message: messages[{i}] needs string 'role' and 'content'")
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise BadRecord(where, "no_assistant: no message with role 'assistant'")
    if check_tags:
        for text in assistant:
            for span in protocol.parse(text):
                if span.tag is not None and not span.closed:
                    raise BadRecord(where, f"unclosed_tag: <{span.tag}> at char {span.start} is never closed")
                if span.tag is not None and not span.opened:
                    raise BadRecord(where, f"unopened_tag: </{span.tag}> at char {span.body_end} has no opener")
    return record


def read_records(path_or_url: str | os.PathLike, on_bad_record: str = "skip", *, stats: RecordStats | None = None,
                 check_tags: bool = True, layout: str = "trajectory") -> Iterator[dict]:
    """Records from a JSONL file, an ArrayRecord file (*.array_record*) or a synth stream URL (http[s]://).

    layout="released" reads the released O-Researcher SFT layout through `importer.import_released`.
    Each record gets "_where" (file and line) so later stages can name it; `stats` collects the counts."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record={on_bad_record!r}: use one of {ON_BAD_RECORD}")
    stats = stats if stats is not None else RecordStats()
    source = str(path_or_url)
    if source.startswith(("http://", "https://")):
        raw = _stream(source)
    elif ".array_record" in Path(source).name:
        raw = _array_record(source)
    else:
        raw = _jsonl(source)
    if layout == "released":
        from oresearcher.data.importer import import_released
        convert = import_released
    elif layout == "trajectory":
        convert = None
    else:
        raise ValueError(f"layout={layout!r}: use 'trajectory' or 'released'")
    for where, item in raw:
        try:
            if isinstance(item, BadRecord):
                raise item
            record = convert(item, where) if convert else item
            record = check_record(record, where, check_tags)
        except BadRecord as e:
            stats.bad(e, on_bad_record)
            continue
        stats.kept += 1
        yield {**record, "_where": where}


def _jsonl(path: str):
    from oresearcher import paths

    file = paths.path(path)   # a local file or a cloud URL (gs://bucket/data.jsonl)
    if not file.exists():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL trajectories)")
    # bytes, decoded line by line: one bad byte is one bad record (named), not the end of the whole read
    with file.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield where, BadRecord(where, f"not_utf8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                                              "line is not UTF-8 (save the file as UTF-8)")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield where, BadRecord(where, f"broken_json: {e.msg} at column {e.colno}")


def _array_record(path: str):
    from array_record.python.array_record_module import ArrayRecordReader

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file (expected an ArrayRecord of JSON trajectories)")
    reader = ArrayRecordReader(path)
    try:
        for n in range(reader.num_records()):
            where = f"{path} record {n}"
            try:
                yield where, json.loads(reader.read([n])[0].decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield where, BadRecord(where, f"broken_json: {e}")
    finally:
        reader.close()


def write_array_record(records, path: str | os.PathLike) -> int:
    """Write records (dicts) as UTF-8 JSON entries of an ArrayRecord file; returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    n = 0
    for record in records:
        writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        n += 1
    writer.close()
    return n


def _with_cursor(url: str, cursor) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "after"]
    if cursor is not None:
        query.append(("after", str(cursor)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _stream(url: str, retries: int = 5, timeout_s: float = 60.0):
    """NDJSON trajectories from the synth service; a dropped connection resumes after the last cursor."""
    import httpx

    from oresearcher import synth_client

    headers = synth_client.auth_headers()
    cursor = dict(parse_qsl(urlsplit(url).query)).get("after")
    failures, n = 0, 0
    while True:
        try:
            with httpx.stream("GET", _with_cursor(url, cursor), headers=headers, timeout=timeout_s) as response:
                if response.status_code != 200:
                    body = response.read().decode("utf-8", "replace")[:300]
                    raise RuntimeError(f"{url}: HTTP {response.status_code}: {body} (check the job id and token)")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    n += 1
                    where = f"{url} line {n} (after cursor {cursor})"
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield where, BadRecord(where, f"broken_json: {e.msg} at column {e.colno}")
                        continue
                    if isinstance(item, dict) and "cursor" in item:
                        cursor = item["cursor"]
                        where = f"{url} cursor {cursor}"
                        if item.get("done"):
                            return
                        item = item.get("record", item.get("trajectory", item))
                        if isinstance(item, dict):
                            item = {k: v for k, v in item.items() if k != "cursor"}
                    yield where, item
                    failures = 0
            return
        except (httpx.TransportError, httpx.RemoteProtocolError) as e:
            failures += 1
            if failures > retries:
                raise ConnectionError(f"{url}: stream failed {failures} times after cursor {cursor}: {e}") from e
            log.warning("%s: stream interrupted (%s); resuming after cursor %s", url, e, cursor)
            time.sleep(min(2.0 ** failures * 0.1, 5.0))

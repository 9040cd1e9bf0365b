"""Reading trajectory records: JSONL, ArrayRecord, the synth NDJSON stream (a real HTTP server on 127.0.0.1,
dropping the connection mid-stream), bad records (skip or stop, named with file, line and reason, counted),
and the importer for the released O-Researcher SFT layout."""
import http.server
import json
import pathlib
import threading
import urllib.parse

import pytest

from oresearcher import protocol as P
from oresearcher.data import BadRecord, RecordStats, load_examples, read_records, write_array_record
from oresearcher.model.tokenizer import Tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TRAJECTORIES = FIXTURES / "trajectories.jsonl"
GOOD = [json.loads(line) for line in TRAJECTORIES.open()][:6]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def mixed(tmp_path):
    """Line 2 broken JSON, line 4 without messages, line 6 with an unclosed tag, line 8 a JSON list."""
    unclosed = json.loads(json.dumps(GOOD[2]))
    unclosed["messages"][2]["content"] = unclosed["messages"][2]["content"].replace("</think>", "", 1)
    no_messages = {k: v for k, v in GOOD[1].items() if k != "messages"}
    lines = [json.dumps(GOOD[0]), '{"id": "broken", "messages": [', json.dumps(GOOD[3]), json.dumps(no_messages),
             "", json.dumps(unclosed), json.dumps(GOOD[4]), "[1, 2]"]
    return write_lines(tmp_path / "mixed.jsonl", lines)


def test_jsonl_roundtrip():
    records = list(read_records(TRAJECTORIES))
    assert len(records) == 48
    assert records[3]["id"] == "fixture-003" and records[3]["_where"] == f"{TRAJECTORIES} line 4"


def test_bad_records_skipped_and_counted(mixed):
    stats = RecordStats()
    records = list(read_records(mixed, "skip", stats=stats))
    assert [r["id"] for r in records] == [GOOD[0]["id"], GOOD[3]["id"], GOOD[4]["id"]]
    assert stats.kept == 3 and dict(stats.skipped) == {"broken_json": 1, "no_messages": 1, "unclosed_tag": 1,
                                                       "not_an_object": 1}
    assert stats.examples["broken_json"] == f"{mixed} line 2: broken_json: Expecting value at column 31"
    assert stats.examples["no_messages"].startswith(f"{mixed} line 4: no_messages")
    assert stats.examples["unclosed_tag"].startswith(f"{mixed} line 6: unclosed_tag: <think>")
    assert stats.summary() == ("3 kept, 4 skipped (broken_json: 1, no_messages: 1, not_an_object: 1, "
                               "unclosed_tag: 1)")


def test_bad_record_stops_with_name_line_reason_and_counts(mixed):
    it = read_records(mixed, "stop")
    assert next(it)["id"] == GOOD[0]["id"]
    with pytest.raises(BadRecord) as err:
        next(it)
    message = str(err.value)
    assert message.startswith(f"{mixed} line 2: broken_json:")
    assert "(1 kept, 1 skipped (broken_json: 1))" in message and "on_bad_record='skip'" in message


def test_over_long_trajectory_is_skipped_or_stops(tmp_path):
    tok = Tokenizer.from_dir(FIXTURES / "tiny_tokenizer")
    long = json.loads(json.dumps(GOOD[1]))
    long["messages"][2]["content"] = long["messages"][2]["content"].replace(
        "<think>", "<think>" + "very long thinking " * 300, 1)
    path = write_lines(tmp_path / "long.jsonl", [json.dumps(GOOD[0]), json.dumps(long), json.dumps(GOOD[2])])
    examples, stats = load_examples(str(path), tok, max_len=3000, on_bad_record="skip")
    assert [e.id for e in examples] == [GOOD[0]["id"], GOOD[2]["id"]]
    assert stats.kept == 2 and dict(stats.skipped) == {"too_long": 1}
    assert stats.examples["too_long"].startswith(f"{path} line 2: too_long:")
    with pytest.raises(BadRecord, match=r"line 2: too_long: \d+ tokens > max_len 3000 \(1 kept, 1 skipped"):
        load_examples(str(path), tok, max_len=3000, on_bad_record="stop")


def test_non_utf8_line_is_a_bad_record_named_by_file_and_line(tmp_path):
    bad = json.dumps(GOOD[1]).encode().replace(b'"id"', b'"\xffid"', 1)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n" + bad + b"\n"
                     + json.dumps(GOOD[2]).encode() + b"\n")          # a BOM on line 1 is accepted
    stats = RecordStats()
    assert [r["id"] for r in read_records(path, "skip", stats=stats)] == [GOOD[0]["id"], GOOD[2]["id"]]
    assert dict(stats.skipped) == {"not_utf8": 1}
    assert stats.examples["not_utf8"] == (f"{path} line 2: not_utf8: byte 0xff at byte 3 of the line is not "
                                          "UTF-8 (save the file as UTF-8)")
    with pytest.raises(BadRecord, match=rf"^{path} line 2: not_utf8: byte 0xff"):
        list(read_records(path, "stop"))


def test_record_longer_than_max_len_can_hold_is_rejected_before_tokenisation(tmp_path):
    """The character bound: a token stands for at most `max_token_chars` characters, so more characters than
    max_len * max_token_chars cannot fit; such a record is refused by its length alone (the message counts
    characters, not tokens), and one at the bound goes on to the exact token count."""
    tok = Tokenizer.from_dir(FIXTURES / "tiny_tokenizer")
    max_len = 500
    bound = max_len * tok.max_token_chars
    assert 1 <= tok.max_token_chars <= 64
    base = json.loads(json.dumps(GOOD[1]))
    others = sum(len(m["content"]) for m in base["messages"][:-1])

    def with_chars(n):
        record = json.loads(json.dumps(base))
        record["messages"][-1]["content"] = "<suggested_answer>" + "a" * (n - others - 37) + "</suggested_answer>"
        assert sum(len(m["content"]) for m in record["messages"]) == n
        return json.dumps(record)
    path = write_lines(tmp_path / "huge.jsonl", [with_chars(bound), with_chars(bound + 1), with_chars(10**7)])
    examples, stats = load_examples(str(path), tok, max_len=max_len, on_bad_record="skip")
    assert examples == [] and dict(stats.skipped) == {"too_long": 3}
    with pytest.raises(BadRecord, match=rf"line 1: too_long: \d+ tokens > max_len {max_len}"):
        load_examples(str(path), tok, max_len=max_len, on_bad_record="stop")
    lines = path.read_text().splitlines()
    write_lines(path, lines[1:])
    with pytest.raises(BadRecord, match=rf"line 1: too_long: {bound + 1} characters, more than max_len {max_len} "
                                        rf"tokens can hold \(a token stands for at most {tok.max_token_chars} "):
        load_examples(str(path), tok, max_len=max_len, on_bad_record="stop")
    write_lines(path, lines[2:])
    with pytest.raises(BadRecord, match="line 1: too_long: 10000000 characters"):
        load_examples(str(path), tok, max_len=max_len, on_bad_record="stop")


def test_on_bad_record_must_be_known(mixed):
    with pytest.raises(ValueError, match="on_bad_record='ignore'"):
        list(read_records(mixed, "ignore"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(read_records(mixed.parent / "nope.jsonl"))


def test_array_record(tmp_path):
    path = tmp_path / "t.array_record"
    assert write_array_record(GOOD + [{"id": "x"}], path) == 7
    stats = RecordStats()
    records = list(read_records(path, stats=stats))
    assert [r["id"] for r in records] == [g["id"] for g in GOOD]
    assert records[2]["_where"] == f"{path} record 2"
    assert stats.examples["no_messages"] == f"{path} record 6: no_messages: missing 'messages' (a list of {{role, content}})"


# ------------------------------------------------------------------------------------------------ HTTP stream
class Stream:
    """A tiny NDJSON trajectory service: GET /v1/trajectories?job=J&after=C serves the records after cursor C
    (chunked); the first connection is cut after `drop_after` lines without ending the body."""

    def __init__(self, lines, drop_after=None):
        self.lines, self.drop_after, self.requests = lines, drop_after, []
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                stream.requests.append(query)
                if url.path != "/v1/trajectories" or query.get("job") != "j1":
                    body = b'{"detail": "no such job"}'
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                after = int(query.get("after", 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                for cursor, line in stream.lines:
                    if cursor <= after:
                        continue
                    if stream.drop_after is not None and sent == stream.drop_after:
                        stream.drop_after = None
                        self.wfile.flush()
                        self.close_connection = True
                        return                       # no terminating chunk: the client sees a broken body
                    data = (line + "\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    sent += 1
                self.wfile.write(b"0\r\n\r\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/trajectories"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stream_lines():
    lines = []
    for i, record in enumerate(GOOD[:4], 1):
        lines.append((i, json.dumps({**record, "cursor": i}) if i % 2 else json.dumps({"cursor": i, "record": record})))
    lines.append((5, "{not json"))
    lines.append((6, json.dumps({"cursor": 6, "record": GOOD[5]})))
    lines.append((7, json.dumps({"cursor": 7, "done": True})))
    return lines


STREAMED = [g["id"] for g in GOOD[:4]] + [GOOD[5]["id"]]


def test_stream_reads_envelopes_and_plain_records(stream_lines):
    server = Stream(stream_lines)
    try:
        stats = RecordStats()
        records = list(read_records(server.url + "?job=j1", stats=stats))
        assert [r["id"] for r in records] == STREAMED
        assert all("cursor" not in r for r in records)
        assert records[3]["_where"] == f"{server.url}?job=j1 cursor 4"
        assert dict(stats.skipped) == {"broken_json": 1} and "after cursor 4" in stats.examples["broken_json"]
    finally:
        server.close()


def test_stream_resumes_after_the_last_cursor(stream_lines):
    server = Stream(stream_lines, drop_after=2)
    try:
        records = list(read_records(server.url + "?job=j1&after=0"))
        assert [r["id"] for r in records] == STREAMED   # nothing lost, nothing twice
        assert [q.get("after") for q in server.requests] == ["0", "2"]
    finally:
        server.close()


def test_stream_starts_after_a_given_cursor(stream_lines):
    server = Stream(stream_lines)
    try:
        records = list(read_records(server.url + "?job=j1&after=3"))
        assert [r["id"] for r in records] == [GOOD[3]["id"], GOOD[5]["id"]]
    finally:
        server.close()


def test_stream_errors_are_named(stream_lines):
    server = Stream(stream_lines)
    try:
        with pytest.raises(RuntimeError, match="HTTP 404.*no such job.*check the job id"):
            list(read_records(server.url + "?job=missing"))
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------ importer
def released_trace():
    return [json.loads(line) for line in (FIXTURES / "released-rl-72b-traces.jsonl").open()][1]


RELEASED_PROMPT = ("You can only use the following 8 functions ... The format for each entry must be: "
                   "[Number]. URL - Webpage Title.")


@pytest.mark.parametrize("layout", ["flat", "sharegpt", "messages", "inference"])
def test_importer_layouts(tmp_path, layout):
    trace = released_trace()
    question, text = trace["prompt"], trace["current_answer"]
    if layout == "flat":
        row = {"id": 21, "question": question, "response": text}
    elif layout == "sharegpt":
        row = {"conversations": [{"from": "system", "value": "You are Qwen."},
                                 {"from": "human", "value": f"user\n\n{RELEASED_PROMPT}\n\n{question}"},
                                 {"from": "gpt", "value": text}]}
    elif layout == "messages":
        row = {"messages": [{"role": "user", "content": f"{RELEASED_PROMPT}\n\n{question}"},
                            {"role": "assistant", "content": text}]}
    else:  # the official inference output
        row = {"id": 21, "prompt": question, "article": trace["article"], "current_answer": text}
    path = write_lines(tmp_path / "released.jsonl", [json.dumps(row, ensure_ascii=False)])
    (record,) = read_records(path, layout="released", check_tags=False)
    assert record["question"] == question
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][0]["content"] == P.system_prompt()
    assert record["messages"][1]["content"] == question
    assert record["messages"][2]["content"] == text.strip()
    assert record["report"] == trace["article"].strip()
    assert record["meta"]["tool_calls"] == {"web_search": 4, "crawl_page": 0}
    assert record["id"] == "21" or record["id"].startswith("released-")
    # The raw released trace has closers without openers: with the tag check on it is a bad record.
    stats = RecordStats()
    assert list(read_records(path, layout="released", stats=stats)) == []
    assert dict(stats.skipped) == {"unopened_tag": 1}


def test_importer_rejects_unreadable_rows(tmp_path):
    rows = [{"foo": 1}, {"question": "q", "response": "no protocol here"}, {"conversations": [{"from": "human",
                                                                                              "value": "q"}]}]
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(r) for r in rows])
    stats = RecordStats()
    assert list(read_records(path, layout="released", stats=stats)) == []
    assert dict(stats.skipped) == {"no_messages": 1, "not_a_trajectory": 1, "no_assistant": 1}


def test_fixture_trajectories_are_valid_with_relaxed_thresholds():
    for record in read_records(TRAJECTORIES):
        text = record["messages"][2]["content"]
        assert P.validate(text, record["question"], min_reasoning_steps=4, min_tool_calls=2) == []
        assert record["report"] == P.extract_report(text)

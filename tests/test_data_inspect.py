"""`python -m oresearcher.data inspect|import` as a user runs them."""
import json
import pathlib
import subprocess
import sys

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ROOT = pathlib.Path(__file__).parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "oresearcher.data", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_inspect_prints_counts_coverage_and_marked_spans():
    out = run("inspect", FIXTURES / "trajectories.jsonl", "--tokenizer", FIXTURES / "tiny_tokenizer", "--index", 5)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "48 kept, 0 skipped" in text
    assert "tokens per record: min " in text and "trained (assistant-authored) tokens: " in text
    assert "record fixture-005" in text and "line 6" in text
    assert "⟦<|im_start|>system" in text                         # the prompt is masked
    assert "⟦<observation>\n# Search Summary" in text            # observations are masked, tags included
    assert "</web_search>\n⟦<observation>" in text               # the model's call is not
    assert "</suggested_answer><|im_end|>⟦" in text              # the end-of-turn token is trained


def test_inspect_stops_on_bad_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text((FIXTURES / "trajectories.jsonl").open().readline() + "{oops\n")
    out = run("inspect", path, "--tokenizer", FIXTURES / "tiny_tokenizer", "--on-bad-record", "stop")
    assert out.returncode == 1
    assert f"{path} line 2: broken_json:" in out.stderr and "(1 kept, 1 skipped (broken_json: 1))" in out.stderr


def test_import_released_layout(tmp_path):
    trace = json.loads((FIXTURES / "released-rl-72b-traces.jsonl").open().readline())
    fixed = trace["current_answer"].replace("</observation>", "</observation>\n<suggested_answer>", 1)
    src = tmp_path / "released.jsonl"
    src.write_text(json.dumps({"question": trace["prompt"], "response": fixed}, ensure_ascii=False) + "\n"
                   + json.dumps({"question": "q"}) + "\n")
    out = run("import", src, tmp_path / "out.jsonl")
    assert out.returncode == 0, out.stderr
    assert "1 kept, 1 skipped (no_messages: 1)" in out.stdout
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert record["question"] == trace["prompt"] and "_where" not in record
    assert record["report"] == trace["article"].strip()

"""`python -m synth run`: the embedded preset on 50 seed questions, malformed seeds, resuming a finished run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oresearcher import protocol

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["photosynthesis and the carbon cycle", "the fall of the Roman Empire", "how vaccines train the immune "
          "system", "the causes of the French Revolution", "plate tectonics and earthquakes", "the printing press",
          "sea level rise", "the history of the internet", "black holes", "the Industrial Revolution",
          "antibiotic resistance", "the Cold War", "ancient Egypt", "the structure of DNA", "wind turbines",
          "the Apollo moon landings", "Buddhism in Asia", "neural networks", "the Great Depression",
          "coral reefs", "the Renaissance in Florence", "volcanic eruptions", "jazz music", "the digestive system",
          "the Silk Road", "quantum mechanics", "the American Civil War", "honey bees and pollination",
          "the Ottoman Empire", "nuclear power", "the Mongol Empire", "the water cycle", "birds and dinosaurs",
          "the Byzantine Empire", "the history of chess", "malaria", "the Amazon rainforest",
          "natural selection", "the Meiji Restoration", "the 1929 stock market crash", "the Hubble Space "
          "Telescope", "the Olympic Games", "the Protestant Reformation", "tsunamis", "the Inca Empire",
          "human memory", "electric cars", "the Great Wall of China", "the Black Death", "the steam engine"]


def synth_run(tmp_path, seeds: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "synth", "run", "--config=configs/synth.py", f"--seeds={seeds}", f"--out={out}",
           f"--config.tools.cache_dir={tmp_path / 'cache'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_embedded_preset_on_50_seeds(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "question": f"What are the key facts about {t}, and why "
                                         "do they matter?"}) + "\n" for i, t in enumerate(TOPICS)))
    out = tmp_path / "out"
    done = synth_run(tmp_path, seeds, out, "--array-record")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "50/50" in done.stderr   # the progress bar
    summary = json.loads((out / "summary.json").read_text())
    accepted = records(out)
    assert summary["accepted"] == len(accepted) >= 45 and summary["accepted"] + summary["rejected"] == 50
    assert summary["wall_time_s"] > 0 and "tokens" in summary and "rejections_per_reason" in summary
    for record in accepted:
        text = record["messages"][2]["content"]
        assert protocol.validate(text, record["question"]) == []
        evidence = "\n".join(s.body for s in protocol.parse(text) if s.tag == "observation")
        for n, url, _ in protocol.parse_references(record["report"]):
            assert url in evidence, (record["id"], n, url)
        cited = set(protocol.cited_numbers(record["report"]))
        assert cited and cited <= {n for n, _, _ in protocol.parse_references(record["report"])}
    from array_record.python.array_record_module import ArrayRecordReader
    reader = ArrayRecordReader(str(out / "trajectories.array_record"))
    assert reader.num_records() == len(accepted)
    assert json.loads(reader.read([0])[0])["id"] == accepted[0]["id"]


def test_malformed_seeds_give_per_line_errors_and_the_rest_runs(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join([
        json.dumps({"id": "good1", "question": "How do volcanoes form?"}),
        '{"id": "broken", "question": ',
        json.dumps({"id": "noq", "text": "where is the question"}),
        json.dumps({"id": "huge", "question": "why " * 262144}),
        json.dumps({"id": "good2", "question": "What is the Silk Road?"}),
    ]) + "\n")
    out = tmp_path / "out"
    done = synth_run(tmp_path, seeds, out, "--config.workflow.candidates=1", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seeds.jsonl line 2: not valid JSON" in done.stderr
    assert "seeds.jsonl line 3: missing 'question'" in done.stderr
    assert "seeds.jsonl line 4: 'question' has 1048576 characters" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["seed_errors"]) == 3 and summary["questions"] == 2
    assert sorted(r["id"] for r in records(out)) == ["good1", "good2"]

    # Re-running the same seeds continues the same job: nothing is synthesized twice or lost.
    first = (out / "trajectories.jsonl").read_text()
    again = synth_run(tmp_path, seeds, out, "--config.workflow.candidates=1", "--no-progress")
    assert again.returncode == 0
    assert (out / "trajectories.jsonl").read_text() == first
    assert json.loads((out / "summary.json").read_text())["accepted"] == 2


def test_unknown_override_and_missing_seeds_file(tmp_path):
    bad = synth_run(tmp_path, tmp_path / "nope.jsonl", tmp_path / "out", "--config.workflow.nope=1")
    assert bad.returncode == 2 and "workflow.nope" in bad.stderr
    missing = synth_run(tmp_path, tmp_path / "nope.jsonl", tmp_path / "out")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def decided(out: Path) -> int:
    import sqlite3
    try:
        with sqlite3.connect(out / "state.sqlite", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM questions WHERE state != 'pending'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_interrupted_run_continues_and_new_seed_lines_are_added(tmp_path):
    """Ctrl-C mid-job writes the outputs so far and exits 130; the same command finishes the job without redoing
    or duplicating a question; appended seed lines are added to the same job; a reused id is refused by name."""
    import signal
    import time
    n = 20   # a wide window to interrupt in, even on a loaded machine (10 were once all done first)
    questions = [f"What are the key facts about {t}?" for t in TOPICS[:n]]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))   # ids from the questions
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synth", "run", f"--seeds={seeds}", f"--out={out}", "--no-progress",
           f"--config.tools.cache_dir={tmp_path / 'cache'}", "--config.workflow.candidates=1",
           "--config.workflow.question_concurrency=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while decided(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "run the same command again to continue" in stderr
    partial = records(out)
    assert 3 <= len(partial) < n and json.loads((out / "summary.json").read_text())["pending"] > 0

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already decided" in again.stderr
    final = records(out)
    assert [r["id"] for r in final[:len(partial)]] == [r["id"] for r in partial]   # kept, not redone
    assert len({r["id"] for r in final}) == len(final) and {r["question"] for r in final} <= set(questions)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pending"] == 0 and summary["accepted"] + summary["rejected"] == n == summary["questions"]

    # Two new lines appended (one repeats an old question verbatim) and an old id reused for another question.
    first_id = final[0]["id"]
    with seeds.open("a") as f:
        f.write(json.dumps({"question": "How do honey bees make honey?"}) + "\n")
        f.write(json.dumps({"question": questions[0]}) + "\n")
        f.write(json.dumps({"id": first_id, "question": "A different question under an old id?"}) + "\n")
    more = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert more.returncode == 0, more.stderr[-2000:]
    assert f"id '{first_id}' was already given to another question" in more.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == n + 1 and summary["pending"] == 0
    assert [r["id"] for r in records(out)[:len(final)]] == [r["id"] for r in final]

"""Bad trajectory records: the SFT run skips them (naming file, line and reason, and counting them) or stops at
the first one, per config.data.on_bad_record."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "trajectories.jsonl"


def _bad_file(tmp_path) -> Path:
    good = [json.loads(line) for line in FIXTURE.read_text().splitlines()[:6]]
    unclosed = json.loads(json.dumps(good[0]))
    unclosed["messages"][-1]["content"] += "\n<think>this thought is never closed"
    too_long = json.loads(json.dumps(good[1]))
    too_long["messages"][-1]["content"] = too_long["messages"][-1]["content"] * 4
    lines = [json.dumps(r) for r in good[:3]]
    lines += ['{"id": "broken", "messages": [', json.dumps({"id": "no-messages", "question": "q"}),
              json.dumps(unclosed), json.dumps(too_long)]
    lines += [json.dumps(r) for r in good[3:]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(tmp_path, data, mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "oresearcher.train", "--config=configs/sft.py:tiny",
                           f"--config.workdir={tmp_path / mode}", f"--config.data.train={data}",
                           f"--config.data.on_bad_record={mode}", "--config.total_steps=1", "--config.progress=False",
                           "--config.data.eval_fraction=0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_skip_names_and_counts_bad_records(tmp_path):
    data = _bad_file(tmp_path)
    p = _train(tmp_path, data, "skip")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    summary = [ln for ln in out.splitlines() if "kept" in ln and "skipped" in ln][0]
    print(summary)
    assert "6 kept, 4 skipped" in summary
    for reason, line in (("broken_json", 4), ("no_messages", 5), ("unclosed_tag", 6), ("too_long", 7)):
        assert f"{reason}: 1" in summary
        assert f"{data} line {line}: {reason}" in out, (reason, out[-3000:])
    assert "6 train / 0 held out" in out


@pytest.mark.slow
def test_stop_names_the_first_bad_record(tmp_path):
    data = _bad_file(tmp_path)
    p = _train(tmp_path, data, "stop")
    print(p.stderr.strip().splitlines()[-1])
    assert p.returncode == 1
    assert f"{data} line 4: broken_json" in p.stderr
    assert not (tmp_path / "stop" / "metrics.jsonl").exists()

"""Ablation plumbing that runs without a synth service: result files and the context-window arithmetic."""
import json

import pytest

from experiments.ablations import context_length, record


class WordTokenizer:
    """One token per whitespace-separated word (decode joins with spaces): a tokenizer whose cuts are easy to
    compute by hand."""

    def encode(self, text):
        return text.split(" ")

    def decode(self, ids):
        return " ".join(ids)


def test_window_stats_by_hand():
    kp = "Reefs are formed of colonies of coral polyps held together by calcium carbonate."
    q = {"key_points": [{"text": kp}]}
    prefix = "SYSTEM QUESTION "
    assistant = f"<think>x</think> <suggested_answer>{kp}</suggested_answer>"
    text = prefix + assistant
    ids = WordTokenizer().encode(text)                      # 17 "tokens"
    records = [(q, ids, assistant, len(prefix))]
    full = context_length.window_stats(records, len(ids), WordTokenizer())
    assert full == {"fits": 1.0, "report_kept": 1.0, "kpr": 100.0}
    # cut after "...colonies": the report is partly visible, too little of the key point survives
    cut = context_length.window_stats(records, 8, WordTokenizer())
    assert cut == {"fits": 0.0, "report_kept": 0.0, "kpr": 0.0}
    # cut off the last token ("carbonate.</suggested_answer>"): 8 of the 9 content words remain (>= 0.6), the
    # report is not complete
    most = context_length.window_stats(records, len(ids) - 1, WordTokenizer())
    assert most["fits"] == 0.0 and most["report_kept"] == 0.0 and most["kpr"] == pytest.approx(100.0)


def test_write_result_writes_json_and_png(tmp_path):
    json_path, png_path = record.write_result("demo", {"title": "Demo", "rows": [{"x": 1, "y": 2}]},
                                              lambda ax: ax.plot([1, 2], [3, 4]), out_dir=tmp_path)
    data = json.loads(json_path.read_text())
    assert data["title"] == "Demo" and data["rows"] == [{"x": 1, "y": 2}] and "CPU" in data["device"]
    assert png_path.read_bytes()[:4] == b"\x89PNG"

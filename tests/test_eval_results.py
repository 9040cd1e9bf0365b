"""experiments.results renders every results JSON (rows, summary, plot) into RESULTS.md."""
import json

from experiments import results


def test_render_tables_summaries_and_plots(tmp_path):
    bench, abl = tmp_path / "bench", tmp_path / "abl"
    bench.mkdir(), abl.mkdir()
    (bench / "sft.json").write_text(json.dumps({
        "title": "SFT throughput", "command": "python -m experiments.bench.sft", "device": "2-core CPU",
        "rows": [{"model": "tiny", "tokens_per_sec": 1234.5}, {"model": "smollm2", "tokens_per_sec": 98.76,
                                                                 "mfu": 0.71}],
        "summary": {"ratio": {"tunix": 1.62}}}))
    (abl / "steps.json").write_text(json.dumps({"rows": [{"steps": 5, "kpr": 40.0}], "note": "x|y"}))
    (abl / "steps.png").write_bytes(b"\x89PNG")
    (abl / "broken.json").write_text("{not json")
    text = results.render([("Benchmarks", bench), ("Ablations", abl), ("Evaluation", tmp_path / "none")],
                          base=tmp_path)
    assert "### SFT throughput" in text and "Command: `python -m experiments.bench.sft`" in text
    assert "| model | tokens_per_sec | mfu |" in text
    assert "| smollm2 | 98.76 | 0.71 |" in text and "| tiny | 1234.5 | n/a |" in text
    assert "| ratio.tunix | 1.62 |" in text
    assert "![steps](abl/steps.png)" in text and "| note | x\\|y |" in text
    assert "### broken" in text and "unreadable" in text
    assert "(no results yet under `none`)" in text
    assert text.index("## Benchmarks") < text.index("## Ablations") < text.index("## Evaluation")


def test_nested_objects_and_lists_of_results_become_tables(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "m.json").write_text(json.dumps({
        "models": {"tiny": {"params": 10, "ours": {"tokens_per_s": 5.0, "times": [1, 2]}}},
        "results": [{"case": "a", "step_s": 0.5}], "per_question": [{"id": 1}]}))
    text = results.render([("Benchmarks", folder)], base=tmp_path)
    assert "| models | params | ours.tokens_per_s |" in text and "| tiny | 10 | 5 |" in text
    assert "| case | step_s |" in text and "| a | 0.5 |" in text
    assert "per_question" not in text and "times" not in text

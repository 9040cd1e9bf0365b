"""experiments/colab.ipynb executed top to bottom, as Colab would, with the tiny settings its CI flag selects."""
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_plots_the_reward_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("ORESEARCHER_NOTEBOOK_CI", "1")       # read by the notebook: tiny settings, no accelerator
    monkeypatch.setenv("ORESEARCHER_NOTEBOOK_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)            # one CPU device, as on Colab (not the 8 fake ones)
    nb = nbformat.read(ROOT / "experiments" / "colab.ipynb", as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "experiments")}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")

    def outputs(marker):
        cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
        return cell.outputs

    plots = [o for o in outputs("GRPO reward parts") if "image/png" in o.get("data", {})]
    assert len(plots) == 1, "the reward-parts cell shows one PNG figure"
    assert len(plots[0]["data"]["image/png"]) > 5000         # base64 of a real figure, not an empty canvas
    rl = [json.loads(line) for line in open(tmp_path / "work" / "rl" / "metrics.jsonl") if '"reward"' in line]
    assert [r["step"] for r in rl] == [1, 2]
    assert all({"reward/base", "reward/tool", "reward/format"} <= r.keys() for r in rl)
    shown = "".join(o.get("text", "") for o in outputs('best["response"]'))
    assert "reward" in shown and "format" in shown            # one policy episode printed with its reward parts
    skipped = "".join(o.get("text", "") for o in outputs("sft-accel"))
    assert skipped.startswith("skipped: CI settings")         # the accelerator cell is read by the flag, not removed
    assert os.path.exists(tmp_path / "work" / "traj" / "trajectories.jsonl")

"""Where an ablation's figures go: one JSON file and one PNG per ablation, side by side.

The JSON layout is the one `python -m experiments.results` renders: {title, description, command, device,
rows: [ {...}, ... ], summary: {...}}; the PNG with the same stem is linked under the table.
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: ablations run on headless CPU machines
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Ablations run on CPU; an installed TPU plugin would otherwise be probed (noisily) when JAX is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def device() -> str:
    return f"{platform.machine()} CPU, {platform.system()} (embedded setup, no network)"


def write_result(name: str, data: dict, plot: Callable[[plt.Axes], None], out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write `name`.json and `name`.png under out_dir; `plot` draws on one matplotlib Axes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # wall times are only comparable on an idle machine: the 1/5/15-minute load average says how idle it was
    data = {"device": device(), **data, "load_average": [round(x, 2) for x in os.getloadavg()]}
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    plot(ax)
    ax.set_title(data.get("title", name), fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return json_path, png_path

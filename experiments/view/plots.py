"""The per-step curves of an RL workdir's metrics.jsonl as one PNG (matplotlib, drawn off-screen).

Four panels: the reward and its parts, tool calls per episode, response length in tokens, and the policy's
entropy when the run logged one (any metric whose name contains "entropy"). The figure is built with the
object API (Figure + Agg canvas), never pyplot, so concurrent requests share no global state.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

PANELS = (
    ("reward parts", ("reward", "reward/base", "reward/tool", "reward/format")),
    ("tool calls per episode", ("tool_calls", "tool_calls/web_search", "tool_calls/crawl_page")),
    ("response length (tokens)", ("response_tokens", "policy_tokens")),
)


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl that have a step (a half-written last line is skipped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(row["step"])
            values.append(float(value) if math.isfinite(value) else math.nan)
    return steps, values


def metrics_png(rows: list[dict], title: str = "") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    entropy = sorted({k for row in rows for k in row if "entropy" in k})
    fig = Figure(figsize=(11, 6.4), dpi=96, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (name, keys) in zip(axes, PANELS + (("entropy", tuple(entropy)),)):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn = 0
        for key in keys:
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
                drawn += 1
        if drawn:
            ax.legend(fontsize=7)
        else:
            missing = "no entropy metric in metrics.jsonl" if name == "entropy" else f"none of {', '.join(keys)}"
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, fontsize=9,
                    color="0.4")
    if title:
        fig.suptitle(title, fontsize=11)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()

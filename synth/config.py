"""Loading `configs/synth.py[:preset]` plus `--config.key=value` overrides, and the config hash for records."""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import pathlib

from ml_collections import ConfigDict

DEFAULT = "configs/synth.py"
REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(spec: str = DEFAULT, overrides: dict | list | None = None) -> ConfigDict:
    """`path[:preset]` -> ConfigDict. A relative path is tried from the working directory, then the repository.

    overrides: {"workflow.candidates": 1} or ["workflow.candidates=1", ...] (values parsed as Python literals).
    """
    path, _, preset = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file() and not file.is_absolute() and (REPO / path).is_file():
        file = REPO / path
    if not file.is_file():
        raise FileNotFoundError(f"--config={spec}: no such file {path!r}; use e.g. --config=configs/synth.py:embedded")
    module_spec = importlib.util.spec_from_file_location(f"synth_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(preset)
    apply_overrides(cfg, overrides or {})
    return cfg


def _literal(value):
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def apply_overrides(cfg: ConfigDict, overrides: dict | list) -> ConfigDict:
    """Set dotted keys that already exist in cfg; an unknown key is an error naming it."""
    items = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides)
    for key, value in items:
        node, *_ = cfg, None
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise KeyError(f"config override {key!r}: unknown key {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"config override {key!r}: unknown key {parts[-1]!r}")
        value = _literal(value)
        old = node[parts[-1]]
        if isinstance(old, float) and isinstance(value, int):
            value = float(value)
        with cfg.unlocked() if hasattr(cfg, "unlocked") else _null():
            try:
                node[parts[-1]] = value
            except TypeError:
                raise ValueError(f"config override {key}={value!r}: expected type {type(old).__name__} "
                                 f"(the default is {old!r})") from None
    return cfg


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def config_hash(cfg: ConfigDict) -> str:
    """sha256 (first 16 hex) of the config's JSON, keys sorted: names the settings a record was made with."""
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Sizes of the embedded teacher's trajectories, largest first: (subtasks, results per query, queries per search,
# page summary characters, sentences per sub-report). Three sub-questions at least: with one search and one crawl
# each, N = 3 is the smallest N for which R_tool pays anything (N = tool_low = 2 pays 0); two results per query at
# least, so that sub-questions on one subject can read different pages (a repeated crawl counts once in N).
SIZES = ((5, 5, 2, 1500, 6), (4, 4, 2, 1000, 5), (3, 3, 1, 600, 4), (3, 2, 1, 300, 3), (3, 2, 1, 150, 2))


def estimate_trajectory_tokens(subtasks: int, num: int, queries: int, summary_chars: int, sentences: int) -> int:
    """Rough assistant-text tokens (protocol.estimate_tokens) of an embedded trajectory of these sizes, fitted on
    the embedded teacher's output for the RL questions: per sub-question its reasoning and calls (~420), a search
    observation (~110 per result), crawl observations (~1.5 pages of summary and heading), its sub-report and its
    share of the final report (~80 per sentence); the subtask list and the report's frame (~150). Measured
    (configs/rl_questions.jsonl, first 8): the (3, 3, 1, 600, 4) size gives 3.4k-5.0k tokens (estimate 4.3k); the
    smallest 2.9k-4.0k (estimate 3.0k; a second search round when the first pages say little), which is the floor:
    a shorter budget needs the warm start's abridging."""
    per_subtask = 420 + 110 * num * queries + 1.5 * (summary_chars / 4 + 60) + 80 * sentences
    return int(150 + subtasks * per_subtask)


def sized_for(tokens: int) -> dict:
    """Overrides (for load_config or `--config.KEY=VALUE`) under which the embedded teacher writes trajectories of
    about `tokens` tokens or fewer: the largest of SIZES whose estimate fits, and workflow.max_tokens = `tokens`,
    so the funnel rejects what still does not fit. A caller that trains on the trajectories passes its sequence
    length less the prompt's tokens (the warm start: warm_start.synth_overrides)."""
    if tokens <= 0:
        raise ValueError(f"sized_for({tokens}): give the trajectory's token budget, a positive number")
    fits = [s for s in SIZES if estimate_trajectory_tokens(*s) <= tokens] or [SIZES[-1]]
    subtasks, num, queries, chars, sentences = fits[0]
    return {"workflow.min_subtasks": min(3, subtasks), "workflow.max_subtasks": subtasks,
            "teacher.search_num": num, "teacher.search_queries": queries, "teacher.answer_sentences": sentences,
            "tools.crawl.summary_chars": chars, "workflow.max_tokens": int(tokens)}

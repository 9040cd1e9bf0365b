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

"""Input checks shared by the CLI (`synth run`) and the HTTP service, so both accept and refuse the same things.

    check_workflow(cfg.workflow)          # ValueError naming workflow.KEY and its range (every Synthesizer build)
    check_overrides({"workflow.candidates": 2})   # a job's overrides: ValueError naming a key the client may
                                                  # not set (teacher.*, judge.*, tools.*, service.*, ...)
    seeds, errors = check_seeds([(where, item), ...], max_chars)   # errors: [(where, field, problem)]

A job's overrides change only how much work the funnel does and how strict its rules are: the teacher, judge
and tool endpoints, their keys (environment variables) and the store are the operator's, set in the config
file, so no request can make the service call another address or send a key elsewhere.
"""
from __future__ import annotations

import hashlib
from typing import Any

# key -> (allowed values) for choices, or (low, high) inclusive for numbers; bounds are sane limits for one job
# (workflow.candidates=1000 would make one request cost a thousand trajectories per question).
WORKFLOW_RANGES: dict[str, tuple] = {
    "mode": ("parallel", "sequential"),
    "step_budget": (1, 64),
    "min_subtasks": (1, 16),
    "max_subtasks": (1, 16),
    "candidates": (1, 16),
    "rules": ("band", "paper"),              # the hard rules' family (synth/funnel.py RULES)
    "tool_low": (0, 1000),                   # the band of N = min(#web_search, #crawl_page) (rules="band")
    "tool_high": (0, 1000),
    "min_reasoning_steps": (0, 1000),        # None: the rules' own minimum
    "min_tool_calls": (0, 1000),
    "max_tokens": (1, 1 << 20),
    "question_concurrency": (1, 4096),
    "processes": (1, 256),
    "role_chats": (False, True),
    "selection": ("trajectory", "report"),   # what the judge reads to pick a candidate (synth/selection.py)
    "min_score": (0.0, 1.0),                 # a chosen candidate must score at least this (judge overall)
    "regenerate": (0, 8),                    # further rounds of candidates when a round yields none to keep
}
# Keys whose None means "the default of workflow.rules" (synth/funnel.py RULES).
OPTIONAL = frozenset({"min_reasoning_steps", "min_tool_calls"})
# What a request may override: the funnel's knobs, not the operator's resources (concurrency, processes).
JOB_OVERRIDES = frozenset(WORKFLOW_RANGES) - {"question_concurrency", "processes"}


def check_value(key: str, value: Any) -> None:
    """ValueError naming workflow.`key` when value is of the wrong type or outside WORKFLOW_RANGES[key]."""
    allowed = WORKFLOW_RANGES[key]
    name = f"workflow.{key}"
    if value is None and key in OPTIONAL:
        return
    if isinstance(allowed[0], bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected true or false")
    elif isinstance(allowed[0], str):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    elif isinstance(allowed[0], float):
        low, high = allowed
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name}={value!r}: expected a number from {low:g} to {high:g}")
    else:
        low, high = allowed
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r}: expected a whole number from {low} to {high}")
        if not low <= value <= high:
            raise ValueError(f"{name}={value}: out of range; use {low} to {high}")


def check_workflow(workflow) -> None:
    """Every known workflow key in range, min_subtasks <= max_subtasks and tool_low <= tool_high."""
    for key in WORKFLOW_RANGES:
        if key in workflow:
            check_value(key, workflow[key])
    if "tool_low" in workflow and "tool_high" in workflow and workflow["tool_low"] > workflow["tool_high"]:
        raise ValueError(f"workflow.tool_low={workflow['tool_low']} is above workflow.tool_high="
                         f"{workflow['tool_high']}; make tool_low <= tool_high (the band of R_tool)")
    if workflow["min_subtasks"] > workflow["max_subtasks"]:
        raise ValueError(f"workflow.min_subtasks={workflow['min_subtasks']} is above workflow.max_subtasks="
                         f"{workflow['max_subtasks']}; make min_subtasks <= max_subtasks")


def check_overrides(overrides: dict) -> dict:
    """A job's overrides, checked: only workflow.KEY for KEY in JOB_OVERRIDES, each in range. Returns them."""
    allowed = ", ".join(f"workflow.{k}" for k in sorted(JOB_OVERRIDES))
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section != "workflow" or name not in JOB_OVERRIDES:
            raise ValueError(f"{key!r} cannot be set by a request (endpoints, keys, tools and the service are set "
                             f"in the operator's config file); a job may override only {allowed}")
        check_value(name, value)
    return overrides


def seed_id(item: dict, question: str) -> str:
    """The seed's id, or "q" + 12 hex of its question's sha256: reordering seeds never renames one."""
    qid = item.get("id")
    if qid in (None, ""):
        return "q" + hashlib.sha256(question.encode()).hexdigest()[:12]
    return str(qid)


def check_seeds(items, max_chars: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """items: [(where, parsed JSON)] -> (seeds [{"id", "question"}], errors [(where, field, problem)]).

    A seed is a JSON object with a "question" that is a string with a non-space character, of at most max_chars
    characters; the same seed (id and question) twice is kept once; one id given to two questions is an error."""
    seeds, errors = [], []
    first: dict[str, tuple[str, str]] = {}
    for where, item in items:
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            errors.append((where, "question", "missing 'question' (a string with a non-space character); e.g. "
                                              '{"id": "q1", "question": "..."}'))
            continue
        if len(item["question"]) > max_chars:
            errors.append((where, "question", f"'question' has {len(item['question'])} characters, more than "
                                              f"{max_chars} (service.max_question_chars); shorten it"))
            continue
        question = item["question"].strip()
        qid = seed_id(item, question)
        if qid in first:
            seen_where, seen_question = first[qid]
            if seen_question != question:
                errors.append((where, "id", f"id {qid!r} was already given to another question at {seen_where}; "
                                            "give each question its own id"))
            continue   # the same seed twice: synthesized once
        first[qid] = (where, question)
        seeds.append({"id": qid, "question": question})
    return seeds, errors

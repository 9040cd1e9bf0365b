"""Teachers: who writes the planner, researcher and summarizer roles of the workflow (PAPER §3).

A teacher answers three questions for synth/workflow.py, which owns the loop, the tools and the merge:

    subtasks = await teacher.plan(question, rng)                       # 3-6 orthogonal sub-queries
    step = await teacher.step(question, research, rng, final=False)    # the next Plan -> Execute move
        # Step(thoughts=[("think", ...), ("plan", ...)], call=("web_search", "query=...") | None,
        #      answer="sub-report with [n] citations and its reference lines" | None)
    report = await teacher.summarize(question, results, references, rng)   # fused report body (no References)

`research` (workflow.Research) holds the sub-query, the elements written so far and the observations with the
pages they showed. Teachers:
  extractive  the embedded default, no LLM (teachers/extractive.py)
  openai      role prompts (synth/prompts/*.txt) over synth.llm.LLMClient (teachers/openai.py); the `local`
              preset is this teacher pointed at an oresearcher serving endpoint.
Either is wrapped by teachers/multi.py, which hands each role to the models of teacher.roles in turn (the teacher
above plays a role without a list) and records who played what; with workflow.role_chats, that is wrapped by
teachers/roles.py, which also writes its answers as the role chats of the openai teacher (SFT data that
teaches a model to be a `local` teacher).
"""
from __future__ import annotations

import contextvars
import dataclasses

from synth.teachers.multi import MultiTeacher

# The accounting (synth.llm.Accounting) of the question being synthesized, set per asyncio task by the funnel.
ACCOUNTING: contextvars.ContextVar = contextvars.ContextVar("synth_accounting", default=None)


class TeacherError(Exception):
    """The teacher could not produce a usable step (an LLM that failed after its retries, unusable output)."""


@dataclasses.dataclass
class Step:
    thoughts: list[tuple[str, str]]
    call: tuple[str, str] | None = None
    answer: str | None = None


def _role_teachers(cfg) -> dict[str, list]:
    """teacher.roles: each role's list of endpoints, one openai teacher per entry (teachers/multi.py)."""
    roles = cfg.teacher.get("roles", None) or {}
    if not roles:
        return {}
    from synth.llm import Endpoint, LLMClient
    from synth.teachers.openai import OpenAITeacher
    out = {}
    for role, entries in dict(roles).items():
        out[role] = []
        for entry in entries or []:
            endpoint = Endpoint.from_dict(dict(entry))
            client = LLMClient([endpoint], timeout=float(cfg.teacher.timeout), max_retries=int(cfg.teacher.max_retries),
                               backoff=float(cfg.teacher.backoff), backoff_max=float(cfg.teacher.backoff_max))
            out[role].append(OpenAITeacher(client, temperature=cfg.teacher.temperature,
                                           max_tokens=cfg.teacher.max_tokens,
                                           answer_prefix=cfg.teacher.get("answer_prefix", "")))
    return out


def make_teacher(cfg, tools):
    """The teacher named by cfg.teacher.kind (recording its role chats when cfg.workflow.role_chats)."""
    kind = cfg.teacher.kind
    if kind == "extractive":
        from synth.teachers.extractive import ExtractiveTeacher
        t = cfg.teacher
        teacher = ExtractiveTeacher(tools, search_num=int(t.get("search_num", 5)),
                                    search_queries=int(t.get("search_queries", 2)),
                                    answer_sentences=int(t.get("answer_sentences", 6)))
    elif kind in ("openai", "local"):
        from synth.llm import LLMClient
        from synth.teachers.openai import OpenAITeacher
        teacher = OpenAITeacher(LLMClient.from_config(cfg.teacher), temperature=cfg.teacher.temperature,
                                max_tokens=cfg.teacher.max_tokens, answer_prefix=cfg.teacher.get("answer_prefix", ""))
    else:
        raise ValueError(f"teacher.kind={kind!r}: choose 'extractive' or 'openai'")
    teacher = MultiTeacher(teacher, _role_teachers(cfg))
    if cfg.workflow.get("role_chats", False):
        from synth.teachers.roles import RoleChatTeacher
        teacher = RoleChatTeacher(teacher)
    return teacher

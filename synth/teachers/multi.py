"""Several teachers: each role (planner, researcher, summarizer) played by a list of models in turn (PAPER §3
distils from several teachers; one model's habits then do not become the student's).

    teacher.roles = {"planner": [{"base_url": ..., "model": "a"}],
                     "researcher": [{"base_url": ..., "model": "a"}, {"base_url": ..., "model": "b"}],
                     "summarizer": []}          # [] -> the main teacher (teacher.kind) plays the role

Assignment is round-robin and deterministic: candidate k's planner and summarizer are entry k mod n of their
lists, and its researcher for sub-question i is entry (k + i) mod n, so the sub-questions of one trajectory are
researched by different models and a rerun assigns the same ones. Who played what is each record's lineage:
meta.lineage = {"planner": name, "researchers": [name per sub-question], "summarizer": name}.
"""
from __future__ import annotations

import contextvars

ROLES = ("planner", "researcher", "summarizer")
# The candidate being synthesized: {"k": its seed, "lineage": {...}}, set per candidate task by the funnel.
CANDIDATE: contextvars.ContextVar = contextvars.ContextVar("synth_candidate", default=None)


def new_lineage() -> dict:
    return {"planner": None, "researchers": {}, "summarizer": None}


def lineage_json(lineage: dict) -> dict:
    """The lineage as recorded: researchers as a list in sub-question order."""
    researchers = lineage.get("researchers") or {}
    return {"planner": lineage.get("planner"), "summarizer": lineage.get("summarizer"),
            "researchers": [researchers[i] for i in sorted(researchers)]}


class MultiTeacher:
    """Routes each role's calls to a teacher of its list (module docstring); `base` plays empty roles."""

    def __init__(self, base, roles: dict[str, list]):
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"teacher.roles: unknown roles {unknown}; use {list(ROLES)}")
        self.base = base
        self.roles = {role: list(roles.get(role) or []) or [base] for role in ROLES}

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def names(self) -> list[str]:
        """Every teacher that may play a role, in order of first appearance."""
        return list(dict.fromkeys(t.name for role in ROLES for t in self.roles[role]))

    @property
    def clients(self) -> list:
        return [t.llm for t in dict.fromkeys(t for role in ROLES for t in self.roles[role])
                if getattr(t, "llm", None) is not None]

    def __getattr__(self, name):        # tools, prompts, ...: the main teacher's
        return getattr(self.base, name)

    def _pick(self, role: str, offset: int = 0):
        candidate = CANDIDATE.get() or {"k": 0, "lineage": new_lineage()}
        teachers = self.roles[role]
        return teachers[(candidate["k"] + offset) % len(teachers)], candidate["lineage"]

    async def plan(self, question, rng):
        teacher, lineage = self._pick("planner")
        lineage["planner"] = teacher.name
        return await teacher.plan(question, rng)

    async def step(self, question, research, rng, final: bool = False):
        teacher, lineage = self._pick("researcher", research.index)
        lineage["researchers"][research.index] = teacher.name
        return await teacher.step(question, research, rng, final=final)

    async def summarize(self, question, subtasks, bodies, references, rng):
        teacher, lineage = self._pick("summarizer")
        lineage["summarizer"] = teacher.name
        return await teacher.summarize(question, subtasks, bodies, references, rng)

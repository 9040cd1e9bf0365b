"""Role chats: a teacher's work written as the chats the `openai` teacher would have had with its LLM.

With `workflow.role_chats = True` every answer of the teacher (the extractive one, typically) is also written as
the reply an LLM playing that role would give, inside exactly the chat that teachers/openai.py sends for it:
  planner     its system prompt and examples, the question -> "- sub-query" lines
  researcher  the sub-question, each step's tool call as an assistant turn, each observation as a user turn ->
              the last turn's cited sub-report; one chat per sub-question (its earlier turns are the earlier steps)
  summarizer  the question, sources and sub-reports -> the report body
The chats of the chosen candidate travel with its record (`role_chats`) and `python -m synth run` writes them to
OUT/role_chats.jsonl as SFT records ({"id", "messages"}). Fine-tuning a model on them teaches it the three roles
as this teacher plays them, so that model can then be served (`python -m oresearcher.serve`) as the `local`
teacher: an embedded, LLM-shaped teacher for models too small to follow the role prompts from instructions alone.
"""
from __future__ import annotations

import contextvars

from synth.teachers import Step
from synth.teachers.openai import OpenAITeacher

# The role chats of the candidate being synthesized: [(order, {"role", "messages"})], set per candidate by the funnel.
ROLE_CHATS: contextvars.ContextVar = contextvars.ContextVar("synth_role_chats", default=None)


def _turn(step: Step) -> str:
    """A researcher step as the assistant turn of teachers/openai.py's chat (the format its parser reads)."""
    parts = [f"<{tag}>\n{body.strip()}\n</{tag}>\n" for tag, body in step.thoughts if body.strip()]
    if step.answer is not None:
        parts.append(f"<subtask_answer>\n{step.answer.strip()}\n</subtask_answer>\n")
    elif step.call is not None:
        parts.append(f"<{step.call[0]}>\n{step.call[1].strip()}\n</{step.call[0]}>\n")
    return "".join(parts)


class RoleChatTeacher:
    """Wraps a teacher: the same answers, each also recorded as an openai-teacher role chat (see module doc)."""

    def __init__(self, inner):
        self.inner = inner
        self.chats = OpenAITeacher(llm=None)    # its prompts and chat layout only; it never calls an LLM here

    @property
    def name(self) -> str:
        return self.inner.name

    def __getattr__(self, name):                # tools, llm, ...: the wrapped teacher's
        return getattr(self.inner, name)

    @staticmethod
    def _keep(order: tuple, role: str, messages: list[dict], reply: str) -> None:
        chats = ROLE_CHATS.get()
        if chats is not None:   # researchers finish in any order: `order` puts them in sub-question order
            chats.append((order, {"role": role, "messages": [*messages, {"role": "assistant", "content": reply}]}))

    async def plan(self, question, rng):
        subtasks = await self.inner.plan(question, rng)
        self._keep((0, 0), "planner", self.chats.plan_chat(question), "\n".join(f"- {s}" for s in subtasks))
        return subtasks

    async def step(self, question, research, rng, final: bool = False) -> Step:
        step = await self.inner.step(question, research, rng, final=final)
        if step.answer is not None:   # the sub-report closes the research: its chat holds every earlier step
            self._keep((1, research.index), f"researcher-{research.index + 1}",
                       self.chats.research_chat(research, final), _turn(step))
        return step

    async def summarize(self, question, subtasks, bodies, references, rng) -> str:
        text = await self.inner.summarize(question, subtasks, bodies, references, rng)
        self._keep((2, 0), "summarizer", self.chats.summary_chat(question, subtasks, bodies, references), text)
        return text

"""The `openai` teacher: planner, researcher and summarizer roles played by any OpenAI-compatible endpoint(s).

Role prompts are the files synth/prompts/{planner,researcher,summarizer}.txt, each followed in the chat by the
worked example turns of {role}.shots.json (their sha256 go into every record's meta): small models follow an
example conversation far better than an instruction (SmolLM2-135M answers the bare planner prompt with prose,
and with the example with a list). The researcher is a multi-turn chat: each assistant turn is one step ending
in a tool call (the request stops at </web_search> / </crawl_page>), each observation comes back as a user
turn, so any chat model works without continuing a partial assistant message. The `local` preset points this
teacher at an `oresearcher` serving endpoint.

LLM failures are retried by synth.llm.LLMClient (timeouts, 5xx, 429, unparseable bodies); a call that still
fails raises, the candidate is rejected with the reason, and no error text ever enters a trajectory.
"""
from __future__ import annotations

import json
import pathlib
import random
import re

from oresearcher import protocol
from synth.teachers import ACCOUNTING, Step, TeacherError

PROMPTS = pathlib.Path(__file__).resolve().parents[1] / "prompts"
_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$")
STOP = ["</web_search>", "</crawl_page>", "</subtask_answer>"]


def role_prompt(role: str) -> list[dict]:
    """The system message of `role` and its worked example turns: the head of every chat the role has."""
    system = (PROMPTS / f"{role}.txt").read_text(encoding="utf-8").strip()
    shots = PROMPTS / f"{role}.shots.json"
    examples = json.loads(shots.read_text(encoding="utf-8")) if shots.exists() else []
    return [{"role": "system", "content": system}, *examples]


class OpenAITeacher:
    def __init__(self, llm, *, temperature: float = 0.7, max_tokens: int = 2048, answer_prefix: str = ""):
        self.llm = llm
        self.temperature, self.max_tokens = temperature, max_tokens
        self.answer_prefix = answer_prefix
        self.prompts = {role: role_prompt(role) for role in ("planner", "researcher", "summarizer")}

    @property
    def name(self) -> str:
        return f"openai:{self.llm.name}"

    async def _chat(self, messages: list[dict], rng: random.Random, stop=None, prefix: str = "") -> str:
        # Each call sends a seed drawn from the workflow's rng (seeded by candidate and question): a sampled job
        # is reproducible on a server that honours `seed`, and a step asked again gets a fresh sample.
        extra = None
        if prefix:   # the server continues this opened assistant turn (vLLM's continue_final_message)
            messages = [*messages, {"role": "assistant", "content": prefix}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        result = await self.llm.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens,
                                     stop=stop, seed=rng.randrange(2 ** 31), extra=extra,
                                     accounting=ACCOUNTING.get())
        return prefix + result.text

    # ------------------------------------------------------------------------------------------ planner
    def plan_chat(self, question: str) -> list[dict]:
        return [*self.prompts["planner"], {"role": "user", "content": question}]

    async def plan(self, question: str, rng: random.Random) -> list[str]:
        text = await self._chat(self.plan_chat(question), rng)
        items = [m.group(1) for m in map(_ITEM.match, text.splitlines()) if m]
        return [protocol.sanitize(i).replace("\n", " ") for i in items]

    # ------------------------------------------------------------------------------------------ researcher
    def research_chat(self, research, final: bool) -> list[dict]:
        task = f"Question: {research.question}\nSub-question: {research.subtask}\n"
        if research.prior:
            task = f"Research so far on the other sub-questions:\n{research.prior}\n\n" + task
        task += f"You have {research.budget} tool calls for this sub-question."
        messages = [*self.prompts["researcher"], {"role": "user", "content": task}]
        turn: list[str] = []
        for tag, body in research.elements:
            if tag == "observation":
                messages.append({"role": "assistant", "content": "".join(turn)})
                messages.append({"role": "user", "content": protocol.observation(body).strip()})
                turn = []
            else:
                turn.append(f"<{tag}>\n{body}\n</{tag}>\n")
        if final:
            # One user turn (observation, then the instruction with the sources it may cite): small models
            # answer a single turn better than two in a row, and copy a source list they were just shown.
            sources = "".join(f"\n[{n}]. {url} - {title}" for n, (url, title) in enumerate(research.seen().items(), 1))
            note = "Your tool calls are spent. Write <think> and <subtask_answer> now." + (
                f" Cite these sources:{sources}" if sources else "")
            if messages[-1]["role"] == "user" and research.elements:
                messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + note}
            else:
                messages.append({"role": "user", "content": note})
        return messages

    async def step(self, question: str, research, rng: random.Random, final: bool = False) -> Step:
        # teacher.answer_prefix (e.g. "<subtask_answer>\n") opens the last turn, where only an answer is usable:
        # SmolLM2-135M otherwise writes another tool call there (with it, a sub-report, still uncited).
        text = await self._chat(self.research_chat(research, final), rng, stop=STOP,
                                prefix=self.answer_prefix if final else "")
        thoughts, call, answer = [], None, None
        for span in protocol.parse(text):
            if span.tag in ("think", "plan"):
                thoughts.append((span.tag, span.body.strip()))
            elif span.tag in protocol.TOOL_TAGS:
                call = (span.tag, span.body.strip())
                break
            elif span.tag == "subtask_answer":
                answer = span.body.strip()
                break
        if answer is not None and not protocol.parse_references(answer):
            answer = None   # an uncited sub-report cannot support the final report: ask again
        if call is None and answer is None:
            return Step([], None, None)
        return Step(thoughts, call=call, answer=answer)

    # ------------------------------------------------------------------------------------------ summarizer
    def summary_chat(self, question, subtasks, bodies, references) -> list[dict]:
        sources = "\n".join(f"[{n}]. {url} - {title}" for n, url, title in references)
        reports = "\n\n".join(f"## {s}\n{b}" for s, b in zip(subtasks, bodies))
        return [*self.prompts["summarizer"],
                {"role": "user", "content": f"Question: {question}\n\nSources:\n{sources}\n\nSub-reports:\n{reports}"}]

    async def summarize(self, question, subtasks, bodies, references, rng) -> str:
        if not references:
            raise TeacherError("no sub-report cited an observed source; nothing to summarize")
        text = await self._chat(self.summary_chat(question, subtasks, bodies, references), rng)
        if not protocol.cited_numbers(text):
            raise TeacherError("the summarizer's report cites no source")
        return protocol.sanitize(text)

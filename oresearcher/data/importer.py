"""Importer for the released O-Researcher SFT dataset (PersonalAILab/O-Researcher-SFT-Dataset on the HF Hub).

Our reading of its layout (the dataset card gives none; we accept every common SFT layout and the prompt format
of the official inference code, and say clearly what we could not read):

- the official inference code sends the model three messages: a generic Qwen system message, a user message
  "user\\n\\n{protocol prompt}\\n\\n{question}" (the protocol prompt ends with the reference format line
  "... [Number]. URL - Webpage Title."), and the trajectory as the assistant text. We take the question to be
  the text after that line (after the first blank line following it), else the whole user text;
- a record is one of: chat messages {"messages": [{"role", "content"}]}; ShareGPT {"conversations":
  [{"from": "system"|"human"|"gpt", "value"}]}; or flat fields, a prompt in one of question/prompt/query/
  instruction/input and the response in one of response/output/answer/current_answer/completion/trajectory;
- the response is the whole protocol text, observations inside, starting with <subtask_list>.

The result follows contract 2 with OUR policy prompt (`protocol.system_prompt()` as system message, the bare
question as user message), so SFT and RL see the same prompt; the original prompt text is kept in
meta.original_prompt.
"""
from __future__ import annotations

import hashlib

from oresearcher import protocol
from oresearcher.data.records import BadRecord

PROMPT_KEYS = ("question", "prompt", "query", "instruction", "input")
RESPONSE_KEYS = ("response", "output", "answer", "current_answer", "completion", "trajectory")
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "bot": "assistant"}
# The last line of the released protocol prompt; the question follows it.
PROMPT_END = "[Number]. URL - Webpage Title."


def question_from_prompt(text: str) -> str:
    """The bare question of a released user message (see the module docstring)."""
    if PROMPT_END in text:
        text = text.rsplit(PROMPT_END, 1)[1]
    elif text.startswith("user\n"):
        text = text[len("user\n"):]
    return text.strip()


def _messages(record: dict) -> list[dict] | None:
    if isinstance(record.get("messages"), list):
        return [{"role": m.get("role"), "content": m.get("content")} for m in record["messages"] if isinstance(m, dict)]
    for key in ("conversations", "conversation"):
        if isinstance(record.get(key), list):
            return [{"role": ROLES.get(str(m.get("from", m.get("role"))).lower(), m.get("from")),
                     "content": m.get("value", m.get("content"))} for m in record[key] if isinstance(m, dict)]
    prompt = next((record[k] for k in PROMPT_KEYS if isinstance(record.get(k), str)), None)
    response = next((record[k] for k in RESPONSE_KEYS if isinstance(record.get(k), str)), None)
    if prompt is None or response is None:
        return None
    out = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
    return out + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def import_released(record, where: str) -> dict:
    """One released record as a contract-2 trajectory record; BadRecord when it can not be read."""
    if not isinstance(record, dict):
        raise BadRecord(where, f"not_an_object: a JSON {type(record).__name__}, expected an object")
    messages = _messages(record)
    if not messages:
        raise BadRecord(where, "no_messages: none of messages / conversations / "
                               f"({'|'.join(PROMPT_KEYS)}) + ({'|'.join(RESPONSE_KEYS)}) found")
    users = [m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)]
    assistants = [m["content"] for m in messages if m["role"] == "assistant" and isinstance(m["content"], str)]
    if not users or not assistants:
        raise BadRecord(where, "no_assistant: the record needs a user prompt and an assistant response")
    text = "".join(assistants).strip()       # multi-turn tool use stored as turns: one continuous trajectory
    if "<subtask_list>" not in text and "<suggested_answer>" not in text:
        raise BadRecord(where, "not_a_trajectory: the response has no <subtask_list> or <suggested_answer>")
    question = question_from_prompt(users[0])
    record_id = record.get("id", record.get("idx"))
    if record_id is None:
        record_id = "released-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]
    return {
        "id": str(record_id),
        "question": question,
        "messages": [{"role": "system", "content": protocol.system_prompt()},
                     {"role": "user", "content": question},
                     {"role": "assistant", "content": text}],
        "report": protocol.extract_report(text) or "",
        "meta": {"source": "O-Researcher-SFT-Dataset", "original_prompt": users[0],
                 "original_system": next((m["content"] for m in messages if m["role"] == "system"), None),
                 "tool_calls": protocol.count_tool_calls(text), "teachers": [], "judge": {}, "timings": {},
                 "tokens": {}, "config_hash": "", "synth_version": "import"},
    }

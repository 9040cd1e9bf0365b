"""Tokenisation with loss masks (DESIGN contract 3): only assistant-authored tokens count.

The chat is rendered with the tokenizer's template once and tokenised once with character offsets; the mask
comes from character spans, never from tokenising pieces separately (pieces tokenise differently from the
whole). A character is assistant-authored when it lies

- inside an assistant message's content as the template rendered it, and
- outside every observation range of `protocol.observation_spans`: the `<observation>` element with both its
  tags (the environment writes the opening tag too: the model stops at `</web_search>`) and the newline after
  it (the newline before it is the model's: BPE merges it with the `>` of the call); or
- in the template's end-of-turn marker right after the content (`<|im_end|>`, `<|eot_id|>`, ...): the model
  must learn to emit it.

A token counts iff it covers at least one character and all its characters are assistant-authored, so a token
straddling the boundary of an observation is masked. System and user tokens are never counted. `assistant_mask`
is the same rule for any text and span list, and is what RL uses for its rollouts.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from oresearcher import protocol
from oresearcher.data.records import BadRecord


@dataclasses.dataclass(frozen=True)
class Example:
    """One tokenised trajectory. input_ids: int32 [T]; loss_mask: bool [T], True where token t is
    assistant-authored (so predicting it from tokens < t is trained)."""
    input_ids: np.ndarray
    loss_mask: np.ndarray
    id: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


def assistant_mask(offsets, spans) -> np.ndarray:
    """bool [T]: token i (character offsets[i] = (start, end)) lies entirely inside the union of `spans`
    [(start, end), ...] of assistant-authored characters, and covers at least one character."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if not len(spans):
        return np.zeros(len(offsets), bool)
    n = int(max(offsets[:, 1].max(initial=0), max(e for _, e in spans)))
    authored = np.zeros(n + 1, np.int64)           # prefix sums of an authored-character indicator
    inside = np.zeros(n, bool)
    for s, e in spans:
        inside[s:e] = True
    authored[1:] = np.cumsum(inside)
    starts, ends = offsets[:, 0], offsets[:, 1]
    return (ends > starts) & (authored[ends] - authored[starts] == ends - starts)


def end_of_turn_markers(tokenizer) -> list[str]:
    """The strings of the tokenizer's stop tokens (EOS, <|im_end|>, ...), longest first."""
    names = [tokenizer.added_tokens.get(i) or tokenizer.decode([i]) for i in tokenizer.stop_ids]
    return sorted({n for n in names if n}, key=len, reverse=True)


def render_chat(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """(rendered chat text, assistant-authored character spans in it) per the rules in the module docstring.

    Each assistant content is located in the rendering (after the rendering of the messages before it, when
    the template renders prefixes stably); templates that trim the content are handled by locating the
    stripped text. A template that rewrites the content (e.g. one that drops everything before the last
    </think>) is an error: the protocol text must reach the model verbatim."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    markers = end_of_turn_markers(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True) if k else ""
        search_from = max(cursor, len(prefix) if text.startswith(prefix) else cursor)
        content = message["content"]
        start = text.find(content, search_from)
        if start < 0 or not content:
            content = content.strip()
            start = text.find(content, search_from) if content else search_from
        if start < 0:
            raise ValueError(f"the chat template changed assistant message {k} (its text is not in the rendered "
                             "chat); use a template that renders the content verbatim (Qwen3-style templates "
                             "that strip <think> blocks do not)")
        end = start + len(content)
        pos = start
        for s, e in protocol.observation_spans(content):
            spans.append((pos, start + s))
            pos = start + e
        spans.append((pos, end))
        gap = len(text[end:]) - len(text[end:].lstrip(" \t\r\n"))
        for marker in markers:
            if text.startswith(marker, end + gap):
                spans.append((end, end + gap + len(marker)))
                end += gap + len(marker)
                break
        cursor = end
    return text, [(s, e) for s, e in spans if e > s]


def tokenize_record(record: dict, tokenizer, max_len: int | None = None) -> Example:
    """The record's chat rendered, tokenised once with offsets, masked (module docstring). Raises BadRecord
    "too_long" when it has more than `max_len` tokens (an over-long trajectory is skipped or stops the run per
    on_bad_record; it is never silently cut). A record whose message texts hold more characters than max_len
    tokens can stand for is "too_long" before it is rendered or tokenised: tokenising a record of tens of MB
    takes minutes and gigabytes only to reject it."""
    if max_len is not None:
        chars = sum(len(m["content"]) for m in record["messages"])
        per_token = getattr(tokenizer, "max_token_chars", None)
        if per_token and chars > max_len * per_token:
            raise BadRecord(record.get("_where", str(record.get("id", "?"))),
                            f"too_long: {chars} characters, more than max_len {max_len} tokens can hold "
                            f"(a token stands for at most {per_token} characters)")
    text, spans = render_chat(record["messages"], tokenizer)
    ids, offsets = tokenizer.encode_with_offsets(text)
    if max_len is not None and len(ids) > max_len:
        raise BadRecord(record.get("_where", str(record.get("id", "?"))),
                        f"too_long: {len(ids)} tokens > max_len {max_len}")
    return Example(input_ids=np.asarray(ids, np.int32), loss_mask=assistant_mask(offsets, spans),
                   id=str(record.get("id", "")))


"""The tokenizer: a `tokenizers.Tokenizer` (or a sentencepiece model) plus the chat template, as HF renders it.

    tok = Tokenizer.from_dir("hf_dir")                  # tokenizer.json + tokenizer_config.json (or tokenizer.model)
    ids = tok.encode(text)                              # no BOS added: chat templates write it themselves
    ids, offsets = tok.encode_with_offsets(text)        # offsets[i] = (start, end) character span of token i
    text = tok.apply_chat_template(messages, add_generation_prompt=True)

Character offsets drive the loss masks (DESIGN contract 3), so they must be exact. For byte-level BPE they are
recomputed from the token bytes: token i covers the characters its bytes belong to, so two tokens holding the
halves of one emoji both cover that emoji, and no character is left uncovered (a backend's `trim_offsets`
would drop the leading space of " word" from its token). Other models use the backend's offsets with gaps
closed towards the following token (its leading "▁" owns the space).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2  # noqa: F401 - transformers renders chat templates with it but does not require it: fail on import
import numpy as np
from tokenizers import Tokenizer as Backend

# transformers serves us its tokenizer loading and template renderer only; its advice that PyTorch is missing
# (models unavailable) is not about anything we use.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Tokens that end an assistant turn in the common chat templates (ChatML, Llama 3, Gemma, Phi); the ones a
# vocabulary has are added to `stop_ids` beside EOS.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>",
               "<|end|>", "</s>")


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


_BYTE_DECODER = _byte_decoder()


class Tokenizer:
    """backend: a `tokenizers.Tokenizer` (or `SentencePieceBackend`); chat_template: jinja source or None;
    bos/eos/pad_token: token strings (pad falls back to EOS)."""

    def __init__(self, backend, chat_template: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None, extra_stop_tokens=()):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        pad_id = self._id(pad_token)
        self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        stops = [self.eos_id] + [self._id(t) for t in tuple(extra_stop_tokens) + END_OF_TURN]
        self.stop_ids = list(dict.fromkeys(i for i in stops if i is not None))
        added = backend.get_added_tokens_decoder() if hasattr(backend, "get_added_tokens_decoder") else {}
        self.added_tokens = {i: t.content for i, t in added.items()}
        self.special_tokens = [t.content for t in added.values() if t.special]
        self._byte_level = _is_byte_level(backend)
        self._bytes = None                      # token id -> bytes, built on first use
        self._max_token_chars = None            # built on first use

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """From an HF model directory: tokenizer.json (or a sentencepiece tokenizer.model), tokenizer_config.json
        for the special tokens and the chat template (or chat_template.jinja / chat_template.json)."""
        path = Path(path)
        if (path / "tokenizer.json").exists():
            # transformers resolves the special tokens and where the chat template lives (tokenizer_config.json,
            # chat_template.jinja, chat_template.json, named templates); we keep its backend for the offsets.
            from transformers import PreTrainedTokenizerFast

            hf = PreTrainedTokenizerFast.from_pretrained(str(path))
            backend, template = hf.backend_tokenizer, hf.chat_template
            if isinstance(template, dict):  # named templates
                template = template.get("default", next(iter(template.values()), None))
            bos, eos, pad = hf.bos_token, hf.eos_token, hf.pad_token
        elif (path / "tokenizer.model").exists():
            # A sentencepiece-only model: transformers would convert it to a BPE approximation (with protobuf);
            # ours reads the model itself, so the pieces and their offsets are the model's own.
            config = _read_json(path / "tokenizer_config.json")
            backend = SentencePieceBackend(path / "tokenizer.model", config)
            template = config.get("chat_template")
            if (path / "chat_template.jinja").exists():
                template = (path / "chat_template.jinja").read_text()
            bos, eos, pad = (_token(config.get(k)) for k in ("bos_token", "eos_token", "pad_token"))
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model; pass an HF model directory")
        generation = _read_json(path / "generation_config.json").get("eos_token_id")
        extra = []
        if generation is not None:
            for i in generation if isinstance(generation, list) else [generation]:
                token = backend.id_to_token(int(i))
                if token is not None:
                    extra.append(token)
        return cls(backend, template, bos, eos, pad, extra_stop_tokens=extra)

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json (or tokenizer.model) and tokenizer_config.json that `from_dir` and HF read."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / ("tokenizer.model" if isinstance(self.backend, SentencePieceBackend)
                                      else "tokenizer.json")))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                  "eos_token": self.eos_token, "pad_token": self.pad_token, "chat_template": self.chat_template,
                  "clean_up_tokenization_spaces": False, "model_max_length": 1 << 20}
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))

    # ------------------------------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in the text become their ids, as in HF."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, offsets): offsets[i] = (start, end) characters of `text` token i stands for. Consecutive
        tokens cover the text without gaps; tokens sharing one multi-byte character share its span."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = list(encoding.ids)
        if self._byte_level:
            offsets = self._byte_offsets(text, ids)
            if offsets is not None:
                return ids, offsets
        return ids, _close_gaps(list(encoding.offsets), len(text))

    def _byte_offsets(self, text: str, ids: list[int]) -> list[tuple[int, int]] | None:
        """Offsets from the bytes of each token; None when the tokens do not spell the text byte for byte (a
        normalizer changed it, or an added token strips spaces). Vectorised: 64k-token trajectories are common."""
        table = self._byte_table()
        pieces = [table[i] if i < len(table) else None for i in ids]
        if any(p is None for p in pieces) or b"".join(pieces) != text.encode("utf-8"):
            return None
        codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        char_bytes = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
        char_at = np.append(np.repeat(np.arange(len(text)), char_bytes), len(text))  # byte -> its character
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        starts = ends - np.array([len(p) for p in pieces], dtype=np.int64)
        start_chars = char_at[starts]
        end_chars = np.where(ends > starts, char_at[np.maximum(ends - 1, 0)] + 1, start_chars)
        return list(zip(start_chars.tolist(), end_chars.tolist()))

    def _byte_table(self) -> list[bytes | None]:
        if self._bytes is None:
            self._bytes = [self._token_bytes(i) for i in range(self.vocab_size)]
        return self._bytes

    def _token_bytes(self, i: int) -> bytes | None:
        if i in self.added_tokens:
            return self.added_tokens[i].encode("utf-8")
        token = self.backend.id_to_token(i)
        if token is None or any(c not in _BYTE_DECODER for c in token):
            return None
        return bytes(_BYTE_DECODER[c] for c in token)

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (stop-string matching in the sampler). Partial UTF-8 stays partial."""
        out = []
        table = self._byte_table() if self._byte_level else [None] * self.vocab_size
        for i in range(self.vocab_size):
            piece = table[i]
            if piece is None and isinstance(self.backend, SentencePieceBackend):
                piece = self.backend.piece_bytes(i)
            out.append(piece if piece is not None else self.decode([i]).encode("utf-8"))
        return out

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its bytes; a character is at least one UTF-8 byte), so a
        text of n characters has at least n / max_token_chars tokens: a length bound known before encoding."""
        if self._max_token_chars is None:
            self._max_token_chars = max(1, max(len(b) for b in self.token_bytes()))
        return self._max_token_chars

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, **kwargs) -> str:
        """The chat rendered by the tokenizer's jinja template, by transformers' own renderer (its sandbox,
        filters and globals), with what HF passes to it: the special tokens, tools/documents and any keyword
        arguments. Only the rendering is transformers'; tokens and byte offsets stay ours (the loss masks)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template: set chat_template in tokenizer_config.json "
                             "(or pass chat_template= to Tokenizer)")
        context = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                   "pad_token": self.pad_token or "", "unk_token": ""}
        context.update(kwargs)
        tools, documents = context.pop("tools", None), context.pop("documents", None)
        plain = json.loads(json.dumps([dict(m) for m in messages]))   # templates see plain JSON data only
        rendered, _ = render_jinja_template([plain], tools=tools, documents=documents,
                                            chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **context)
        return rendered[0]


def _is_byte_level(backend) -> bool:
    if not isinstance(backend, Backend):
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [d.get("type") for d in decoder.get("decoders", [decoder])]
    return "ByteLevel" in kinds


def _close_gaps(offsets: list[tuple[int, int]], n_chars: int) -> list[tuple[int, int]]:
    """Extend each token's start back to the previous token's end, so no character is uncovered."""
    out, prev_end = [], 0
    for start, end in offsets:
        start = min(start, prev_end) if start > prev_end else start
        out.append((start, max(end, start)))
        prev_end = max(prev_end, end)
    return out


def _token(value) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or remove the file") from None


# ------------------------------------------------------------------------------------------ sentencepiece
class _Encoding:
    def __init__(self, ids, offsets):
        self.ids, self.offsets = ids, offsets


class _Added:
    def __init__(self, content):
        self.content, self.special = content, True


class SentencePieceBackend:
    """A sentencepiece model behind the subset of the `tokenizers.Tokenizer` API used here. Special-token
    strings in the text (BOS/EOS/pad, control and user-defined pieces) are split off first, as HF does."""

    def __init__(self, model_file: Path, config: dict):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        specials = {_token(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        specials |= {self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())
                     if self.sp.is_control(i) or self.sp.is_unknown(i)}
        for entry in (config.get("added_tokens_decoder") or {}).values():
            specials.add(_token(entry))
        self.specials = {}                               # piece -> id, for the pieces the model really has
        for token in filter(None, specials):
            i = self.sp.piece_to_id(token)
            if self.sp.id_to_piece(i) == token:
                self.specials[token] = i

    def get_vocab_size(self, with_added_tokens=True):
        return self.sp.get_piece_size()

    def get_added_tokens_decoder(self):
        return {i: _Added(t) for t, i in self.specials.items()}

    def token_to_id(self, token):
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def id_to_token(self, i):
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def piece_bytes(self, i) -> bytes | None:
        piece = self.sp.id_to_piece(i)
        if self.sp.is_byte(i):
            return bytes([int(piece[1:-1], 16)])
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return piece.encode("utf-8") if piece in self.specials else b""
        return piece.replace("▁", " ").encode("utf-8")

    def encode(self, text, add_special_tokens=False):
        import re
        ids, offsets, pos = [], [], 0
        pattern = "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True))
        pieces = re.split(f"({pattern})", text) if pattern else [text]
        for piece in pieces:
            if piece in self.specials:
                ids.append(self.specials[piece])
                offsets.append((pos, pos + len(piece)))
            elif piece:
                char_at = []
                for k, ch in enumerate(piece):
                    char_at.extend([k] * len(ch.encode("utf-8")))
                char_at.append(len(piece))
                spans = []
                for p in self.sp.encode_as_proto(piece).pieces:
                    ids.append(p.id)
                    spans.append((pos + char_at[p.begin], pos + (char_at[p.end - 1] + 1 if p.end > p.begin
                                                                else char_at[p.begin])))
                # Byte-fallback pieces of one character: sentencepiece gives the character to the last one
                # only; every piece of the character gets its span.
                for k in range(len(spans) - 2, -1, -1):
                    if spans[k][0] == spans[k][1] == spans[k + 1][0]:
                        spans[k] = spans[k + 1]
                offsets += spans
            pos += len(piece)
        if add_special_tokens and self.sp.bos_id() >= 0:
            ids, offsets = [self.sp.bos_id()] + ids, [(0, 0)] + offsets
        return _Encoding(ids, offsets)

    def decode(self, ids, skip_special_tokens=False):
        out, run = [], []
        for i in ids:
            piece = self.sp.id_to_piece(i)
            if piece in self.specials:
                out.append(self.sp.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(piece)
            else:
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)

    def save(self, path):
        Path(path).write_bytes(self.model_file.read_bytes())

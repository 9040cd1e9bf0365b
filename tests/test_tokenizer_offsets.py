"""Tokenizer: ids and character offsets against transformers on the same files, on CJK, emoji and specials."""
import json
import pathlib

import pytest

from oresearcher.model.tokenizer import Tokenizer

TINY = pathlib.Path(__file__).parent / "fixtures" / "tiny_tokenizer"
TEXTS = [
    "Hello world, this is plain ASCII.",
    "日本の高齢者人口は増え続けている。人工智能在教育领域",
    "Emoji 🚀🌍✨ and a family 👨‍👩‍👧 and flags 🇯🇵!",
    "naïve café — “quotes” ‘x’ 한국어 🙂\n\n\t  spaces   and\r\nnewlines ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>𝔘𝔫𝔦</think><|endoftext|>",
    "",
    " ",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(TINY)


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(TINY))


def covers(text, offsets):
    """Offsets are monotone and every character is covered by some token."""
    covered = [False] * len(text)
    prev = 0
    for s, e in offsets:
        assert 0 <= s <= e <= len(text) and s >= prev - 1 and e >= prev
        prev = e
        for i in range(s, e):
            covered[i] = True
    return all(covered)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_offsets_match_transformers(tok, hf, text):
    ids, offsets = tok.encode_with_offsets(text)
    theirs = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == theirs["input_ids"] == tok.encode(text)
    assert offsets == [tuple(o) for o in theirs["offset_mapping"]]
    assert covers(text, offsets)
    assert tok.decode(ids) == text == hf.decode(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_are_the_characters_of_the_token_bytes(tok, text):
    """Each token's bytes lie inside the UTF-8 bytes of the characters its offsets name."""
    ids, offsets = tok.encode_with_offsets(text)
    table = tok.token_bytes()
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    for i, (s, e) in zip(ids, offsets):
        assert table[i] in text[s:e].encode("utf-8")
    split = [(s, e) for (s, e) in offsets if any(ord(c) > 0xFFFF for c in text[s:e])]
    if "🚀" in text:  # astral characters are split across byte tokens that share one character span
        assert len(split) > len(set(split))


def test_trimmed_backend_offsets_do_not_leave_gaps(tmp_path):
    """A GPT-2 style post-processor trims the leading space from " word" offsets; ours still cover it."""
    spec = json.loads((TINY / "tokenizer.json").read_text())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text((TINY / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_dir(tmp_path)
    text = "the observation of a web search"
    raw = tok.backend.encode(text, add_special_tokens=False).offsets
    assert not covers(text, raw)                     # the backend's trimmed offsets leave the spaces out
    ids, offsets = tok.encode_with_offsets(text)
    assert covers(text, offsets)
    assert offsets == Tokenizer.from_dir(TINY).encode_with_offsets(text)[1]


def test_non_byte_level_offsets_close_gaps(tmp_path):
    """A Metaspace (sentencepiece-like) BPE built with `tokenizers`: the backend offsets, gaps closed."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(["the web search found the page", "日本 の 人口"] * 20,
                                trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"],
                                                    show_progress=False))
    tok = Tokenizer(backend, eos_token="</s>")
    text = "the page found 日本"
    ids, offsets = tok.encode_with_offsets(text)
    assert covers(text, offsets)
    assert tok.decode(ids) == text
    assert tok.stop_ids == [backend.token_to_id("</s>")]


def test_special_tokens_and_ids(tok, hf):
    assert tok.vocab_size == len(hf) == 512
    assert tok.eos_id == hf.eos_token_id == tok.pad_id == hf.pad_token_id
    im_end = hf.convert_tokens_to_ids("<|im_end|>")
    assert tok.stop_ids == [tok.eos_id, im_end]
    assert tok.encode("<|im_end|>") == [im_end]
    assert set(tok.special_tokens) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}


def test_save_roundtrip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    text = "日本 🚀 <|im_end|> x"
    assert again.encode_with_offsets(text) == tok.encode_with_offsets(text)
    assert (again.eos_id, again.pad_id, again.stop_ids) == (tok.eos_id, tok.pad_id, tok.stop_ids)
    messages = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(messages) == tok.apply_chat_template(messages)
    assert AutoTokenizer.from_pretrained(str(tmp_path)).encode(text, add_special_tokens=False) == tok.encode(text)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer.from_dir(tmp_path)


def test_sentencepiece_fallback(tmp_path):
    """A sentencepiece tokenizer.model (no tokenizer.json): ids as sentencepiece gives them, specials split off
    first, offsets covering the text, the chat template from tokenizer_config.json."""
    import sentencepiece as spm

    lines = ["the web search found the page about the population of japan",
             "日本の人口は減っている", "a b c d e f g h i j k l m n o p"] * 30
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=340, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    template = "{% for m in messages %}{{ bos_token }}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}))
    tok = Tokenizer.from_dir(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    text = "the page about japan 日本🚀"
    assert tok.encode(text) == sp.encode(text)
    assert tok.decode(tok.encode(text)) == text
    ids, offsets = tok.encode_with_offsets(text)
    assert covers(text, offsets) and all(e > s for s, e in offsets)   # byte-fallback pieces share the emoji
    assert offsets[-4:] == [(len(text) - 1, len(text))] * 4
    ids, offsets = tok.encode_with_offsets("x</s>the page")
    assert ids.count(2) == 1 and offsets[ids.index(2)] == (1, 5)
    assert covers("x</s>the page", offsets)
    assert tok.eos_id == 2 and tok.bos_id == 1 and tok.stop_ids == [2]
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert rendered == "<s>[user] hi</s>"
    assert tok.token_bytes()[sp.piece_to_id("▁the")] == b" the"

"""Chat templates render exactly as transformers renders them, in a sandbox."""
import json
import pathlib
import shutil

import pytest

from oresearcher import protocol
from oresearcher.model.tokenizer import Tokenizer

TINY = pathlib.Path(__file__).parent / "fixtures" / "tiny_tokenizer"

# A template exercising what real ones use: namespace, loop controls, tojson on non-ASCII, raise_exception,
# whitespace control, tools, a {% generation %} block, and the special tokens passed in by the renderer.
RICH_TEMPLATE = """{%- set ns = namespace(system=none, n=0) %}
{%- for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}
{{- bos_token }}
{%- if tools %}<|im_start|>tools
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}
  {%- if m['role'] == 'system' %}{% continue %}{% endif %}
  {%- if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
  {%- set ns.n = ns.n + 1 %}
<|im_start|>{{ m['role'] }}{% if loop.first and ns.system %} ({{ ns.system | trim }}){% endif %}
{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}
{% else %}{{ m['content'] | tojson }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": protocol.system_prompt()}, {"role": "user", "content": "日本の人口は？ 🚀"},
     {"role": "assistant", "content": "<subtask_list>\n- a\n</subtask_list>"}],
    [{"role": "system", "content": "  s  "}, {"role": "user", "content": "a \"quoted\" <|im_end|> ü"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer
    return Tokenizer.from_dir(TINY), AutoTokenizer.from_pretrained(str(TINY))


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("gen", [False, True])
def test_fixture_template_matches_transformers(pair, chat, gen):
    ours, theirs = pair
    rendered = ours.apply_chat_template(chat, add_generation_prompt=gen)
    assert rendered == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert ours.encode(rendered) == theirs.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen,
                                                               return_dict=False)


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("rich")
    shutil.copy(TINY / "tokenizer.json", d / "tokenizer.json")
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    config.update(chat_template=RICH_TEMPLATE, bos_token="<|endoftext|>")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("gen", [False, True])
def test_rich_template_matches_transformers(rich, chat, gen):
    ours, theirs = rich
    tools = [{"name": "web_search", "description": "搜索 the web", "parameters": {"q": "str"}}]
    for kwargs in ({}, {"tools": tools}):
        mine = ours.apply_chat_template(chat, add_generation_prompt=gen, **kwargs)
        assert mine == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen, **kwargs)
    assert "搜索" in ours.apply_chat_template(chat, tools=tools)


def test_template_errors_and_sandbox(rich, tmp_path):
    ours, _ = rich
    import jinja2
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    evil = Tokenizer(ours.backend, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        evil.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(ours.backend).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_files(tmp_path):
    """chat_template.jinja beside tokenizer.json (the newer HF layout) wins over tokenizer_config.json."""
    shutil.copy(TINY / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(TINY / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{% endfor %}")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "<user>"
    assert tok.stop_ids == [0, 1, 2]          # EOS, the generation config's extra EOS, then <|im_end|>

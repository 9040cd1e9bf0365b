"""The sampler against transformers' greedy `generate`, token for token (a tiny random Llama loaded with load_hf,
and the embedded SmolLM2 GGUF), a padded batch against the same prompts one by one, and multi-turn continuation
against a from-scratch forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oresearcher.sampler import Sampler, SamplingParams

GREEDY64 = SamplingParams(temperature=0.0, max_new_tokens=64, stop=())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random Llama (GQA, untied head) built with transformers, saved, and loaded with our load_hf."""
    import torch
    import transformers

    from oresearcher.model import load_hf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config).eval()
    # random init is near-uniform: sharpen it so greedy choices are not near-ties
    with torch.no_grad():
        hf.lm_head.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(path)
    return hf, load_hf(str(path))


def _hf_greedy(hf, ids, n):
    import torch
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_tiny_llama_greedy_matches_transformers_and_batch_matches_single(tiny_llama):
    hf, model = tiny_llama
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 384, size=n).tolist() for n in (7, 33, 1, 20)]
    sampler = Sampler(model, eos_ids=())
    batch = sampler.generate(prompts, GREEDY64)
    for p, out in zip(prompts, batch):
        theirs = _hf_greedy(hf, p, 64)
        single = sampler.generate([p], GREEDY64)[0]
        assert out.tokens == theirs, f"prompt len {len(p)}: ours {out.tokens[:12]} vs transformers {theirs[:12]}"
        assert single.tokens == out.tokens and len(out.tokens) == 64 and out.finish_reason == "length"
        np.testing.assert_allclose(single.logprobs, out.logprobs, atol=1e-4)
    print(f"tiny llama: {len(prompts)} prompts x 64 greedy tokens equal transformers; batch == one by one")


def test_logprobs_and_continuation_match_a_full_forward(tiny_llama):
    _, model = tiny_llama
    sampler = Sampler(model, eos_ids=(), prefill_chunk=16)   # small chunks: prompts are prefilled in pieces
    prompts = [list(range(3, 40)), [5, 9, 11]]
    session = sampler.start(prompts, max_len=160)
    first = sampler.step(session, [0, 1], SamplingParams(temperature=1.0, max_new_tokens=10, stop=(), seed=1))
    observation = [17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35]
    session.tokens[1].extend(observation)
    second = sampler.step(session, [1], SamplingParams(temperature=0.7, max_new_tokens=12, stop=(), seed=2))
    row = session.tokens[1]
    assert row == prompts[1] + first[1].tokens + observation + second[0].tokens
    logits = model(jnp.asarray([row]))[0]
    n0, n1 = len(prompts[1]), len(prompts[1]) + len(first[1].tokens) + len(observation)
    want1 = [float(jax.nn.log_softmax(logits[n0 - 1 + i])[t]) for i, t in enumerate(first[1].tokens)]
    want2 = [float(jax.nn.log_softmax(logits[n1 - 1 + i] / 0.7)[t]) for i, t in enumerate(second[0].tokens)]
    np.testing.assert_allclose(first[1].logprobs, want1, atol=2e-4)
    np.testing.assert_allclose(second[0].logprobs, want2, atol=2e-4)
    # greedy continuation after an appended observation equals greedy on the whole sequence from scratch
    session.tokens[0].extend(observation)
    cont = sampler.step(session, [0], SamplingParams(temperature=0.0, max_new_tokens=16, stop=()))[0]
    fresh = sampler.generate([session.tokens[0][:-16]], SamplingParams(temperature=0.0, max_new_tokens=16, stop=()))
    assert cont.tokens == fresh[0].tokens


def test_attention_window_grows_with_the_rows(tiny_llama):
    """A session sized for 2000 tokens holds (and attends over) only the cache slots its calls can write: 128,
    then 256, then 512 slots as row 0 grows over three turns, the earlier slots carried over each time the cache
    grows. Every sampled token's logprob equals a from-scratch forward of the whole row."""
    _, model = tiny_llama
    sampler = Sampler(model, eos_ids=(), prefill_chunk=64)
    session = sampler.start([list(range(3, 60)), [7, 8]], max_len=2000)
    observation = list(range(100, 130))
    pieces = {0: [], 1: []}                     # row -> [(index of the first generated token, completion)]
    windows = []
    for turn in range(3):                       # row 0 reaches 57 + 60 = 117, 207, 297 tokens: windows 128, 256, 512
        before = [len(session.tokens[r]) for r in (0, 1)]
        outs = sampler.step(session, [0, 1], SamplingParams(temperature=1.0, max_new_tokens=60, stop=(), seed=turn))
        windows.append(session.window)
        for r, out in zip((0, 1), outs):
            pieces[r].append((before[r], out))
            session.tokens[r].extend(observation)
    assert len(session.tokens[0]) == 57 + 3 * (60 + 30)
    assert windows == [128, 256, 512] and session.cache["k"][0].shape[2] == 512
    for r, row in pieces.items():
        logp = jax.nn.log_softmax(model(jnp.asarray([session.tokens[r]]))[0], axis=-1)
        for start, out in row:
            want = [float(logp[start - 1 + i, t]) for i, t in enumerate(out.tokens)]
            np.testing.assert_allclose(out.logprobs, want, atol=2e-4)


def test_a_single_row_session_grows_its_cache_with_the_spare_block(tiny_llama):
    """Batch 1 keeps 128 spare slots past the window (see the sampler's docstring): 128 + 128 slots for a short
    row of a 2000-token session, 256 + 128 once a step may write past slot 128; the continuation's logprobs still
    equal a from-scratch forward."""
    _, model = tiny_llama
    sampler = Sampler(model, eos_ids=())
    session = sampler.start([list(range(3, 60))], max_len=2000)
    assert (session.window, session.cache["k"][0].shape[2]) == (128, 256)
    first = sampler.step(session, [0], SamplingParams(temperature=1.0, max_new_tokens=50, stop=(), seed=1))[0]
    assert (session.window, session.cache["k"][0].shape[2]) == (128, 256)
    second = sampler.step(session, [0], SamplingParams(temperature=1.0, max_new_tokens=60, stop=(), seed=2))[0]
    assert (session.window, session.cache["k"][0].shape[2]) == (256, 384)
    logp = jax.nn.log_softmax(model(jnp.asarray([session.tokens[0]]))[0], axis=-1)
    for start, out in ((57, first), (57 + 50, second)):
        want = [float(logp[start - 1 + i, t]) for i, t in enumerate(out.tokens)]
        np.testing.assert_allclose(out.logprobs, want, atol=2e-4)


def test_shared_prefix_is_prefilled_once_and_generates_what_row_by_row_prefill_does(tiny_llama):
    """Three prompts with a 40-token common prefix (the batch bucket is 4: one padding row). Sharing prefills the
    prefix once and copies it: the rows start with 40 tokens written (0 without sharing), the padding row stays
    empty, and greedy tokens, logprobs and the whole cache equal those of prefilling every row itself."""
    _, model = tiny_llama
    prefix = [int(x) for x in np.random.default_rng(3).integers(3, 250, 40)]
    prompts = [prefix + [11, 12, 13], prefix + [21], prefix + [31, 32, 33, 34, 35]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop=())
    shared, plain = Sampler(model, eos_ids=(), prefill_chunk=16), Sampler(model, eos_ids=(), share_prefix=False)
    s_shared, s_plain = shared.start(prompts, 128), plain.start(prompts, 128)
    assert list(s_shared.written) == [40, 40, 40, 0] and list(s_plain.written) == [0, 0, 0, 0]
    assert not np.asarray(s_shared.cache["segment_ids"])[3].any()
    out_shared, out_plain = shared.step(s_shared, range(3), params), plain.step(s_plain, range(3), params)
    assert [o.tokens for o in out_shared] == [o.tokens for o in out_plain]
    # a 128-token session: 128 slots
    assert s_shared.window == 128 and s_shared.cache["k"][0].shape[2] == 128
    for a, b in zip(out_shared, out_plain):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s_shared.cache), jax.tree.leaves(s_plain.cache)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # prompts that differ from the first token on, or a single prompt: nothing to share
    assert list(shared.start([[5, 6, 7], [8, 9]], 64).written) == [0, 0]
    assert list(shared.start([prefix], 64).written) == [0]
    assert list(shared.start([prefix, prefix], 64).written) == [39, 39]       # identical: all but the last token


def test_sampling_filters_and_budget(tiny_llama):
    _, model = tiny_llama
    sampler = Sampler(model, eos_ids=())
    prompts = [[4, 5, 6]] * 4
    top1 = sampler.generate(prompts, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=20, stop=(), seed=5))
    greedy = sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=20, stop=()))
    assert [o.tokens for o in top1] == [o.tokens for o in greedy]     # top-k = 1 is greedy
    tiny_p = sampler.generate(prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=20, stop=()))
    assert [o.tokens for o in tiny_p] == [o.tokens for o in greedy]   # top-p -> 0 keeps only the argmax
    free = sampler.generate(prompts, SamplingParams(temperature=1.5, max_new_tokens=20, stop=(), seed=5))
    assert len({tuple(o.tokens) for o in free}) > 1                    # rows sample independently
    session = sampler.start([[4, 5, 6]], max_len=10)
    out = sampler.step(session, [0], SamplingParams(temperature=0.0, max_new_tokens=50, stop=()))[0]
    assert len(out.tokens) == 7 and out.finish_reason == "length"      # the session's max_len caps the row


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers_64_tokens():
    import torch
    import transformers

    from oresearcher.model import load_gguf
    from oresearcher.model.gguf_io import embedded_gguf_path

    model, tokenizer = load_gguf()
    path = embedded_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    questions = ["Write two sentences about the history of the bicycle.", "Why is the sky blue?"]
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                              add_generation_prompt=True)) for q in questions]
    sampler = Sampler(model, tokenizer, eos_ids=())
    ours = sampler.generate(prompts, GREEDY64)
    for p, out in zip(prompts, ours):
        theirs = _hf_greedy(hf, p, 64)
        print("ours:  ", repr(tokenizer.decode(out.tokens)))
        print("theirs:", repr(tokenizer.decode(theirs)))
        assert out.tokens == theirs
        assert sampler.generate([p], GREEDY64)[0].tokens == out.tokens


def test_shared_prefix_on_a_mesh_equals_the_plain_sampler():
    """The same on a sharded model (data x fsdp x tensor = 2 x 2 x 2): the one-row prefix cache and the copy into
    the batch's sharded cache give the plain sampler's greedy tokens and logprobs."""
    from flax import nnx

    from oresearcher import sharding
    from oresearcher.model.config import PRESETS
    from oresearcher.model.decoder import Decoder

    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(model, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    prefix = [int(x) for x in np.random.default_rng(5).integers(3, 250, 50)]
    prompts = [prefix + [7 + i] * (i + 1) for i in range(4)]
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop=())
    shared, plain = Sampler(model, eos_ids=()), Sampler(model, eos_ids=(), share_prefix=False)
    s_shared = shared.start(prompts, 128)
    assert list(s_shared.written) == [50] * 4
    assert not sharding.is_fully_replicated(s_shared.cache["k"][0])      # the copy kept the cache's sharding
    out_shared, out_plain = shared.step(s_shared, range(4), params), plain.generate(prompts, params)
    assert [o.tokens for o in out_shared] == [o.tokens for o in out_plain]
    for a, b in zip(out_shared, out_plain):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)

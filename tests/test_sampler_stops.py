"""Stop strings on generated tokens: the automaton table against brute-force search over random token sequences
(stop strings spanning tokens and ending inside one), then the jitted loop stopping where the text says."""
import dataclasses

import numpy as np
import pytest

from oresearcher.sampler import STOP_STRINGS, Sampler, SamplingParams, stop_table

PIECES = [b"<", b"/", b"</", b"web", b"_", b"search", b"_search", b">", b">\n", b"</web_search>", b"crawl",
          b"page", b"_page>", b"</crawl_page> and more", b"suggested", b"_answer", b"answer>", b"x", b" ", b"\n",
          b"</sugg", b"ested_answer>", b"\xe4\xbd", b"\xa0", b"web_search>", b"</c", b"rawl_p", b"age>"]


def _first_stop_brute(seq, vocab, patterns):
    text = b""
    for i, t in enumerate(seq):
        text += vocab[t]
        if any(p in text for p in patterns):
            return i
    return None


def _first_stop_table(seq, table):
    state, match = 0, table.shape[0] - 1
    for i, t in enumerate(seq):
        state = table[state, t]
        if state == match:
            return i
    return None


def test_table_agrees_with_brute_force_on_random_sequences():
    patterns = [s.encode() for s in STOP_STRINGS]
    table = stop_table(STOP_STRINGS, PIECES)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(3000):
        seq = rng.integers(0, len(PIECES), size=rng.integers(1, 14)).tolist()
        want = _first_stop_brute(seq, PIECES, patterns)
        assert _first_stop_table(seq, table) == want, [PIECES[t] for t in seq]
        hits += want is not None
    assert hits > 200      # the random sequences really contain stops, many spanning tokens
    # a stop string split over four tokens, and one ending inside a token that carries more text
    assert _first_stop_table([2, 3, 6, 7], table) == 3
    assert _first_stop_table([17, 13, 17], table) == 1
    assert _first_stop_table([20, 21], table) == 1
    assert _first_stop_table([25, 26, 27], table) == 2
    assert _first_stop_table([2, 3, 5, 17, 7], table) is None        # "</web_x>" is not a stop


@pytest.mark.slow
def test_loop_stops_at_a_stop_string_spanning_tokens():
    """A random decoder with SmolLM2's real tokenizer: pick a stop string that starts inside one generated token
    and ends inside a later one; generation must stop exactly at the token that completes it."""
    from flax import nnx

    from oresearcher.model import PRESETS, Decoder, load_gguf

    _, tokenizer = load_gguf()
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=49152)
    model = Decoder(cfg, rngs=nnx.Rngs(3))
    sampler = Sampler(model, tokenizer, eos_ids=())
    prompt = tokenizer.encode("Hello there")
    free = sampler.generate([prompt], SamplingParams(temperature=1.0, max_new_tokens=40, stop=(), seed=7))[0]
    pieces = [tokenizer.decode([t]) for t in free.tokens]
    # find tokens i < j with printable ASCII text so the stop string is well defined
    ok = [i for i, p in enumerate(pieces) if len(p) >= 2 and p.isascii()]
    i, j = ok[2], ok[4]
    stop = pieces[i][1:] + "".join(pieces[i + 1:j]) + pieces[j][:1]
    text_before = "".join(pieces[:j])
    assert stop not in text_before          # the first occurrence completes inside token j
    out = sampler.generate([prompt], SamplingParams(temperature=1.0, max_new_tokens=40, stop=(stop,), seed=7))[0]
    assert out.finish_reason == "stop" and out.tokens == free.tokens[:j + 1]
    # EOS stops a row too, and is kept as the last token
    eos_sampler = Sampler(model, tokenizer, eos_ids=(free.tokens[5],))
    out = eos_sampler.generate([prompt], SamplingParams(temperature=1.0, max_new_tokens=40, stop=(), seed=7))[0]
    assert out.finish_reason == "eos" and out.tokens == free.tokens[:free.tokens.index(free.tokens[5]) + 1]


def test_sampling_distribution_matches_softmax_and_filters():
    import jax
    import jax.numpy as jnp

    from oresearcher.sampler import _sample

    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.07, 0.03]] * 20000))
    tok, lp = _sample(logits, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0), False)
    freq = np.bincount(np.asarray(tok), minlength=5) / 20000
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.15, 0.07, 0.03], atol=0.015)
    np.testing.assert_allclose(np.asarray(lp), np.log([0.5, 0.25, 0.15, 0.07, 0.03])[np.asarray(tok)], atol=1e-5)
    # top-p 0.8 keeps {0, 1, 2} (mass before token 2 is 0.75 < 0.8), renormalised
    tok, _ = _sample(logits, jax.random.key(1), jnp.float32(1.0), jnp.float32(0.8), jnp.int32(0), True)
    freq = np.bincount(np.asarray(tok), minlength=5) / 20000
    np.testing.assert_allclose(freq, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0, 0], atol=0.015)
    # top-k 2, temperature 2: p ~ sqrt(p) over the two largest
    tok, _ = _sample(logits, jax.random.key(2), jnp.float32(2.0), jnp.float32(1.0), jnp.int32(2), True)
    freq = np.bincount(np.asarray(tok), minlength=5) / 20000
    w = np.sqrt([0.5, 0.25])
    np.testing.assert_allclose(freq, [*(w / w.sum()), 0, 0, 0], atol=0.015)


def test_per_layer_weights_are_made_once_per_parameter_version():
    """The sampler slices the stacked layers once per parameter version: reused across calls, rebuilt when the
    parameters change, and freed with the parameters they came from (no second copy held through training)."""
    import gc

    from flax import nnx

    from oresearcher.model.config import PRESETS
    from oresearcher.model.decoder import Decoder

    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sampler = Sampler(model, eos_ids=(), weight_layout="own")
    params = SamplingParams(temperature=0.0, max_new_tokens=4, stop=())
    first = sampler.generate([[1, 2, 3]], params)[0].tokens
    weights = sampler.weights()
    assert sampler.generate([[1, 2, 3]], params)[0].tokens == first
    assert sampler.weights() is weights                             # same parameters: the same copy
    np.testing.assert_array_equal(weights["layers"][1]["wq"], model.layers.wq[...][1])

    model.layers.wq.value = model.layers.wq[...] * 3.0              # a training step replaces the arrays
    gc.collect()
    assert not sampler._weights                                     # the old copy went with the old arrays
    changed = sampler.generate([[1, 2, 3]], params)[0].tokens
    assert sampler.weights() is not weights
    np.testing.assert_array_equal(sampler.weights()["layers"][1]["wq"], model.layers.wq[...][1])
    fresh = Sampler(model, eos_ids=(), weight_layout="own").generate([[1, 2, 3]], params)[0].tokens
    assert changed == fresh                                         # sampled at the new weights
    assert weights["layers"][0]["wq"].shape == model.layers.wq[...].shape[1:]

    model.embed.value = model.embed[...] * 2.0                      # the unembedding is part of the version too
    gc.collect()
    assert not sampler._weights


def test_decode_layouts_sample_what_the_decoders_own_layout_does():
    """The CPU decode layouts (q/k/v and gate/up fused; either packed in panels for the CPU kernels, attention by
    the kernel too, or every matrix transposed into row blocks) hold the same weights: each gives the same greedy
    tokens and logprobs as the decoder's own layout, for a tied Llama, an untied Qwen2 with q/k/v biases and a
    Qwen3 with q/k norms; the blocks and the panels give back the fused matrices exactly."""
    import dataclasses

    from flax import nnx

    from oresearcher.model import cpu_kernels
    from oresearcher.model.config import PRESETS
    from oresearcher.model.decoder import FUSED, Decoder, decode_layout

    assert cpu_kernels.available(), cpu_kernels.unavailable_reason()
    tiny = PRESETS["tiny"]
    for cfg in (dataclasses.replace(tiny, tie_embeddings=True),
                dataclasses.replace(tiny, family="qwen2", attention_bias=True, tie_embeddings=False),
                dataclasses.replace(tiny, family="qwen3", qk_norm=True)):
        model = Decoder(cfg, rngs=nnx.Rngs(3))
        rng = np.random.default_rng(0)
        for name in ("bq", "bk", "bv", "q_norm", "k_norm"):      # initialised to constants: make them count
            if hasattr(model.layers, name):
                w = getattr(model.layers, name)
                w.value = w[...] + 0.3 * rng.standard_normal(w[...].shape).astype(np.float32)
        prompts = [[5, 9, 17, 3, 22], [7, 1]]
        params = SamplingParams(temperature=0.0, max_new_tokens=12, stop=())
        ref = Sampler(model, eos_ids=(), weight_layout="own").generate(prompts, params)
        for layout, blocks in (("blocks", 2), ("blocks", 3), ("panels", 2)):     # 3: blocks of unequal size
            sampler = Sampler(model, eos_ids=(), weight_layout=layout, weight_blocks=blocks)
            outs = sampler.generate(prompts, params)
            for o, r in zip(outs, ref):
                assert o.tokens == r.tokens
                np.testing.assert_allclose(o.logprobs, r.logprobs, atol=1e-5)
            layer = sampler.weights()["layers"][1]
            assert set(FUSED) <= set(layer) and not {"wq", "w_gate", "w_down"} & set(layer)
            if layout == "blocks":
                assert all(len(layer[name]) == blocks for name in FUSED)
            else:
                assert all(layer[name].ndim == 3 and layer[name].shape[2] == cpu_kernels.PANEL for name in FUSED)
                assert sampler.weights()["head"].ndim == 3
        p = {name: w[1] for name, w in model.layers.arrays().items()}
        d = cfg.hidden_size
        fused = {"fused_qkv": np.concatenate([p["wq"].reshape(d, -1), p["wk"].reshape(d, -1),
                                              p["wv"].reshape(d, -1)], axis=1),
                 "fused_o": p["wo"].reshape(-1, d), "fused_gate_up": np.concatenate([p["w_gate"], p["w_up"]], 1),
                 "fused_down": p["w_down"]}
        blocks, panels = decode_layout(p, "blocks", 2), decode_layout(p, "panels")
        for name, w in fused.items():
            np.testing.assert_array_equal(np.concatenate(blocks[name]).T, w)
            unpacked = np.asarray(panels[name]).transpose(1, 0, 2).reshape(w.shape[0], -1)
            np.testing.assert_array_equal(unpacked, w)

"""The paged KV cache: the same logits as the dense decoder, the same episodes as the dense engine, and a pool
that holds the blocks of the tokens in use (all given back at the end)."""
import jax.numpy as jnp
import numpy as np
from flax import nnx
from test_engine_rollout import TurnsAgent, _assert_same_episodes, delay_url  # noqa: F401  (fixture)

from oresearcher.engine import Engine, paged
from oresearcher.model import PRESETS, Decoder
from oresearcher.sampler import SamplingParams


def test_paged_forward_in_chunks_equals_the_dense_decoder():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, 250, (2, 40)), jnp.int32)
    want = np.asarray(model(ids))
    block = 8
    pool = paged.init_pool(model, 16, block)
    # each row's blocks scattered over the pool, not in order
    table = jnp.asarray([[9, 2, 14, 5, 11], [3, 12, 1, 7, 15]], jnp.int32)
    layers = tuple({k: v[i] for k, v in model.layers.arrays().items()} for i in range(model.cfg.num_layers))
    got = []
    for start, size in ((0, 16), (16, 16), (32, 8)):
        pos = jnp.broadcast_to(jnp.arange(start, start + size, dtype=jnp.int32), (2, size))
        hidden, pool = paged.forward(model, {"layers": layers}, pool, table, ids[:, start:start + size], pos)
        got.append(np.asarray(model.unembed(hidden)))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-5, rtol=0)


def test_the_paged_engine_equals_the_dense_engine_and_holds_blocks_by_use(delay_url):  # noqa: F811
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    system = [int(x) for x in rng.integers(3, 250, 37)]          # a shared prefix: 4 whole blocks of 8 are shared
    prompts = [system + [int(x) for x in rng.integers(3, 250, int(n))] for n in rng.integers(3, 30, 6)]
    turns, budgets = [2, 1, 3, 2, 4, 1], [21, 40, 9, 17, 6, 30]
    args = (delay_url, turns, budgets, [0.0] * 6)
    dense, paged_agent = TurnsAgent(*args), TurnsAgent(*args)
    params = SamplingParams(temperature=0.0, stop=())
    Engine(model, eos_ids=(), slots=3, chunk=8, weight_layout="blocks").run(prompts, dense, params, max_len=512)
    engine = Engine(model, eos_ids=(), slots=3, chunk=8, kv="paged", block=8)
    stats = engine.run(prompts, paged_agent, params, max_len=512)
    _assert_same_episodes(dense, paged_agent)
    # the pool never held more than the slots' tokens in blocks (plus a chunk of room each, and the prefix once)
    longest = max(len(p) + t * (b + 3) for p, t, b in zip(prompts, turns, budgets))
    assert 0 < stats["kv_blocks_peak"] <= 3 * (-(-(longest + 8) // 8)) + 5
    assert stats["kv_blocks_peak"] * 8 < 3 * 512 // 4          # far below slots x max_len
    assert engine.alloc.in_use() == 0 and len(engine.alloc.free) == engine.alloc.num_blocks - 1

"""The engine's inference layout (oresearcher/engine/layout.py) on 8 fake CPU devices: the weight copy is
tensor-parallel over heads / MLP / vocabulary with the slots over the rest, each device holds a fraction of it,
and greedy episodes equal those of one device."""
import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_engine_rollout import TurnsAgent, _assert_same_episodes, _prompts, delay_url  # noqa: F401

from oresearcher import sharding
from oresearcher.engine import Engine
from oresearcher.model import PRESETS, Decoder
from oresearcher.sampler import SamplingParams


def _device_bytes(tree) -> int:
    """Bytes the first device holds of every array in the tree."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for a in jax.tree.leaves(tree) for s in a.addressable_shards if s.device == dev)


def _full_bytes(tree) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("tensor, kv_spec", [(0, P(None, "tensor", None)), (4, P(None, None, None))])
def test_weights_are_tensor_parallel_and_slots_split_over_the_rest(tensor, kv_spec):
    """tiny: 4 heads, 2 KV heads, MLP 128, vocabulary 256 on 8 devices trained over fsdp 8. Auto: tensor 2 (the
    largest that also divides the KV heads), data 4; tensor 4: the KV heads do not divide it and are replicated."""
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(model, sharding.make_mesh({"fsdp": 8}))
    engine = Engine(model, eos_ids=(), slots=8, chunk=8, tensor=tensor)
    plan = engine.sampler.plan
    assert (plan.tensor, plan.data) == ((2, 4) if tensor == 0 else (4, 2))
    w = engine.sampler.weights()
    layer = w["layers"][0]
    assert layer["wq"].sharding.spec == P(None, "tensor", None)         # [D, H, hd]: column-parallel over heads
    assert layer["wo"].sharding.spec == P("tensor", None, None)         # [H, hd, D]: row-parallel over heads
    assert layer["w_up"].sharding.spec == P(None, "tensor")             # [D, F]
    assert layer["w_down"].sharding.spec == P("tensor", None)           # [F, D]
    assert layer["wk"].sharding.spec == kv_spec
    assert w["embed"].sharding.spec == P("tensor", None) and w["head"] is None   # tied: the embedding unembeds
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(w))      # tiny computes in fp32
    assert engine.sampler.weights() is w                                # once per parameter version
    # every device holds a share of the copy: 1/tensor of it plus the small replicated norms (and, at tensor 4,
    # the replicated K/V projections)
    held, full = _device_bytes(w), _full_bytes(w)
    assert held < (full / plan.tensor * 1.1 if tensor == 0 else full / 2), (held, full)
    # the cache: slots over data, KV heads over tensor where they divide
    engine._fit(256, 32)
    assert engine.cache["k"][0].sharding.spec == P("data", "tensor" if tensor == 0 else None, None, None)
    assert engine.cache["segment_ids"].sharding.spec == P("data", None)


def test_a_bf16_model_decodes_from_a_bf16_copy():
    cfg = dataclasses.replace(PRESETS["tiny"], compute_dtype="bfloat16")
    model = Decoder(cfg, rngs=nnx.Rngs(0))          # fp32 parameters, as the trainer keeps them
    sharding.shard_model(model, sharding.make_mesh({"fsdp": 8}))
    w = Engine(model, eos_ids=(), slots=8).sampler.weights()
    assert {a.dtype for a in jax.tree.leaves(w)} == {jnp.dtype(jnp.bfloat16)}
    assert model.layers.wq[...].dtype == jnp.float32   # the training parameters are left as they are


@pytest.mark.parametrize("training_mesh", [{"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_the_inference_layout_engine_equals_one_device(delay_url, training_mesh):  # noqa: F811
    """From either training layout (fsdp 8, or 2 x 2 x 2) the engine's copy is data 4 x tensor 2, and its greedy
    episodes are those of one device."""
    one = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharded = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(sharded, sharding.make_mesh(training_mesh))
    turns, budgets = [2, 1, 3, 2, 1], [11, 30, 6, 17, 9]
    args = (delay_url, turns, budgets, [0.0] * 5)
    a, b = TurnsAgent(*args), TurnsAgent(*args)
    params = SamplingParams(temperature=0.0, stop=())
    Engine(one, eos_ids=(), slots=4, chunk=8, weight_layout="own").run(_prompts(5, 3), a, params, max_len=200)
    engine = Engine(sharded, eos_ids=(), slots=4, chunk=8)
    assert engine.sampler.plan is not None and engine.sampler.plan.data == 4
    engine.run(_prompts(5, 3), b, params, max_len=200)
    assert tuple(engine.cache["k"][0].sharding.spec)[:2] == ("data", "tensor")
    _assert_same_episodes(a, b)

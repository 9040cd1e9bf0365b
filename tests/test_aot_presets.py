"""Every accelerator preset names its AOT target, and its (micro)batches split over that target's mesh without
dropping a mesh axis; the RL update compiles for the preset's own target with no --target flag."""
import re

import pytest

from configs import rl as rl_configs
from configs import sft as sft_configs
from oresearcher import aot, sharding
from oresearcher.rl import grpo

ACCELERATOR = [(m, name) for m in (rl_configs, sft_configs) for name in m.PRESETS
               if dict(m.get_config(name).mesh) != {"data": -1}]


@pytest.mark.parametrize("module,name", ACCELERATOR, ids=[f"{m.__name__}:{n}" for m, n in ACCELERATOR])
def test_accelerator_presets_name_a_target_their_microbatches_split_over(module, name):
    config = module.get_config(name)
    assert config.aot_target, f"{name}: no aot_target"
    target = aot.make_target(config.aot_target)
    mesh = sharding.make_mesh(dict(config.mesh), devices=target.devices)
    if config.stage == "rl":
        rows = config.questions_per_step * config.rollout.group_size // config.grpo.minibatches
        length = config.rollout.max_tokens
        k = grpo.num_microbatches(rows, length, grpo.GRPOConfig.from_config(config), grpo.batch_shards(mesh))
        shape = (rows // k, length)
    else:
        shape = (config.data.batch_size // config.grad_accum, config.data.seq_len)
    rules = tuple(tuple(r) for r in config.rules) if config.get("rules") else None
    spec = sharding.logical_to_spec(("activation_batch", "activation_length"), mesh, rules, shape)
    assert spec[0] is not None, f"{name}: microbatch rows {shape} replicated over the mesh {dict(mesh.shape)}"


def test_rl_update_and_engine_programs_compile_for_the_presets_own_target():
    """The update and the engine's prefill and decode programs (32 slots of a 2048-token cache in the inference
    layout: tensor 2 x data 4 for tiny's 4 heads and 2 KV heads on 8 chips), each with its line, and one verdict
    over what is resident at once."""
    config = rl_configs.get_config("tiny")
    config.mesh = {"data": 8}
    config.aot_target = "tpu:v5e-8"
    config.questions_per_step, config.rollout.group_size, config.grpo.minibatches = 4, 8, 1
    config.rollout.max_tokens = 2048
    config.grpo.length_multiple = 128
    config.grpo.microbatch_tokens = 16 * 2048          # 32 rows -> 2 microbatches of 16 (2 per chip)
    lines = []
    report = aot.run(config, out=lines.append)
    text = "\n".join(lines)
    assert "target: tpu:v5e-8" in text and "2 microbatch(es) of 16 x 2048 tokens" in text
    assert report.fits and lines[-1].startswith("fits: yes (peak ")
    assert report.aliased > 0                          # the state is donated: updated in place
    assert "engine: 32 slots x 2048 cache slots (dense), inference layout tensor 2" in text
    totals = {}
    for name in ("update", "prefill", "decode"):
        line = next(line for line in lines if line.startswith(name))
        totals[name] = float(re.search(r"= (\d+\.\d\d) GiB$", line).group(1))
    assert "prefill (32 rows x 512 tokens into the cache)" in text and "decode (32 slots x 16 tokens)" in text
    assert f"(peak {max(totals.values()):.2f} GiB of 15.75 GiB)" in lines[-1]
    assert sum(line.startswith("fits: ") for line in lines) == 1

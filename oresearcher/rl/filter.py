"""The paper's difficulty filter for RL prompts, offline: sample K (= 8) episodes per question with the starting
policy, score them with the composite reward, and drop questions the policy always solves or always fails
(zero-variance groups teach GRPO nothing).

    python -m oresearcher.rl.filter --config=configs/rl.py[:preset] --questions=IN.jsonl --out=KEPT.jsonl \
        [--samples=8] [--low=0.2] [--high=0.8] [--config.key=value ...]

A question is kept when its rewards are not all <= low, not all >= high, and not all equal. Abstained episodes
are left out of the decision (a question with fewer than two judged episodes is dropped). KEPT.jsonl gets one
{"question", "rewards", "mean", "std"} per kept question; the summary (counts per reason) is printed and written
beside it as KEPT.jsonl.summary.json.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rl.py", "RL config (policy, rollout, reward, synth)")
_QUESTIONS = flags.DEFINE_string("questions", None, "questions to filter (JSONL with 'question', or text lines)")
_OUT = flags.DEFINE_string("out", None, "where the kept questions go (JSONL)")
_SAMPLES = flags.DEFINE_integer("samples", 8, "episodes per question")
_LOW = flags.DEFINE_float("low", 0.2, "'always fails': every reward <= low")
_HIGH = flags.DEFINE_float("high", 0.8, "'always solves': every reward >= high")
_BATCH = flags.DEFINE_integer("batch", 4, "questions rolled out together")


def decide(rewards: list[float], low: float, high: float) -> str:
    """'keep' or the reason to drop: 'too_few_judged', 'always_low', 'always_high', 'zero_variance'."""
    if len(rewards) < 2:
        return "too_few_judged"
    r = np.asarray(rewards)
    if (r <= low).all():
        return "always_low"
    if (r >= high).all():
        return "always_high"
    if np.ptp(r) == 0:
        return "zero_variance"
    return "keep"


def main(argv):
    del argv
    import jax

    from oresearcher import sharding
    from oresearcher.rl import rewards as rewards_lib
    from oresearcher.rl.rollout import RolloutConfig, make_generator, rollout
    from oresearcher.rl.synth_service import synth_service
    from oresearcher.rl.train import load_questions
    from oresearcher.rl.warm_start import policy_from_config

    if not _QUESTIONS.value or not _OUT.value:
        sys.exit("python -m oresearcher.rl.filter: give --questions=FILE and --out=FILE")
    config = _CONFIG.value
    questions = load_questions(_QUESTIONS.value)
    rcfg = RolloutConfig.from_config(config.rollout)
    rcfg.group_size = _SAMPLES.value
    wcfg = rewards_lib.RewardConfig.from_config(config.reward)
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    mesh = sharding.make_mesh(dict(config.mesh))
    with synth_service(config) as url, jax.set_mesh(mesh), open(out, "w") as f:
        model, tokenizer = policy_from_config(config, mesh, Path(config.workdir))
        sampler = make_generator(model, tokenizer, config.rollout, _BATCH.value * rcfg.group_size)
        for start in range(0, len(questions), _BATCH.value):
            batch = questions[start:start + _BATCH.value]
            episodes, _ = rollout(sampler, tokenizer, batch, url, rcfg, seed=start)
            scored = asyncio.run(rewards_lib.score_all(url, [e.question for e in episodes],
                                                       [e.response for e in episodes], wcfg))
            for i, q in enumerate(batch):
                group = scored[i * rcfg.group_size:(i + 1) * rcfg.group_size]
                judged = [r.total for r in group if not r.abstained]
                verdict = decide(judged, _LOW.value, _HIGH.value)
                counts[verdict] = counts.get(verdict, 0) + 1
                if verdict == "keep":
                    f.write(json.dumps({"question": q, "rewards": judged, "mean": float(np.mean(judged)),
                                        "std": float(np.std(judged))}) + "\n")
                    f.flush()
            print(f"filter: {start + len(batch)}/{len(questions)} questions, {counts}", flush=True)
    summary = {"questions": len(questions), "samples": _SAMPLES.value, "low": _LOW.value, "high": _HIGH.value,
               **counts}
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)

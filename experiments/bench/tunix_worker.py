"""The google-tunix side of experiments/bench/tunix_compare.py. Runs in tunix's own virtual environment
(.venv-tunix, made by `python -m experiments.bench.tunix_compare --setup`) and imports nothing from this
repository, so it sees only tunix's pinned packages.

    .venv-tunix/bin/python experiments/bench/tunix_worker.py      # then one JSON command per line on stdin

Commands (one JSON object per line); every answer is one line "@@ {json}" on stdout (tunix logs elsewhere):
    {"cmd": "hello"}                                  -> versions, device
    {"cmd": "sft_setup", "batch": 8, "seq": 512}      -> builds tunix's PeftTrainer and compiles its train step
    {"cmd": "sft", "steps": k}                        -> seconds per step over k steps of that jitted step
    {"cmd": "decode_setup", "batch": 8, "prompt": 64, "new": 128}  -> tunix Sampler, compiled by one call
    {"cmd": "decode"}                                 -> seconds of one greedy generate call
    {"cmd": "grpo", "prompts": 2, "group": 4, "new": 64, "prompt": 64}
        -> the first call starts GRPOLearner.train on an endless stream of batches; each call lets exactly one
           more global step run and answers with the seconds of the previous one (time between the learner's
           successive requests for a batch: rollout, rewards, advantages, update, weight sync)
    {"cmd": "quit"}

The model is tunix's own Qwen2 (tunix.models.qwen2) at the compared shape; token ids travel as text ("12 7 301",
a whitespace tokenizer), because tunix's sampler and RL cluster take strings.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

OUT = sys.stdout
sys.stdout = sys.stderr            # anything tunix prints goes to stderr; answers go to OUT

SHAPE = dict(vocab=32000, hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, intermediate=1024)
NO_EOS = SHAPE["vocab"]            # an id the model can never produce: every row generates the full budget


def answer(obj: dict) -> None:
    OUT.write("@@ " + json.dumps(obj) + "\n")
    OUT.flush()


class IdTokenizer:
    """Token ids written as whitespace-separated decimals: encode/decode are exact inverses."""

    def encode(self, text, **_):
        return [int(t) for t in text.split()]

    def decode(self, ids, **_):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0                    # 0 = no BOS is prepended (tunix adds one only for a non-zero id)

    def eos_id(self):
        return NO_EOS

    def pad_id(self):
        return 0


def build_model(seed: int = 0):
    from tunix.models.qwen2 import model as qwen2
    cfg = qwen2.ModelConfig(num_layers=SHAPE["layers"], vocab_size=SHAPE["vocab"], embed_dim=SHAPE["hidden"],
                            hidden_dim=SHAPE["intermediate"], num_heads=SHAPE["heads"], head_dim=SHAPE["head_dim"],
                            num_kv_heads=SHAPE["kv_heads"], rope_theta=1_000_000, norm_eps=1e-6,
                            use_tied_embedding=False, dtype=jnp.float32, param_dtype=jnp.float32)
    return qwen2.Qwen2(cfg, rngs=nnx.Rngs(seed))


def prompt_strings(n: int, length: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(map(str, rng.integers(1, SHAPE["vocab"], length))) for _ in range(n)]


class Worker:
    def __init__(self):
        self.mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                                  axis_types=(jax.sharding.AxisType.Auto,) * 2)
        self.sft = None
        self.decode_state = None
        self.grpo = None

    # ------------------------------------------------------------------------------------------------ SFT
    def sft_setup(self, batch: int, seq: int) -> dict:
        from tunix.sft import peft_trainer, utils
        model = build_model()
        tx = optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
        trainer = peft_trainer.PeftTrainer(model, tx, peft_trainer.TrainingConfig(eval_every_n_steps=10 ** 9,
                                                                                   max_steps=10 ** 9))

        def model_input(x: peft_trainer.TrainingInput):
            mask = x.input_mask
            return {"input_tokens": x.input_tokens, "input_mask": mask,
                    "positions": utils.build_positions_from_mask(mask),
                    "attention_mask": utils.make_causal_attn_mask(mask)}

        trainer = trainer.with_gen_model_input_fn(model_input)
        rng = np.random.default_rng(0)
        # seq + 1 tokens: tunix's loss predicts tokens 1..T from 0..T-1 of one array, so T trained positions
        ids = rng.integers(0, SHAPE["vocab"], (batch, seq + 1)).astype(np.int32)
        example = peft_trainer.TrainingInput(input_tokens=jnp.asarray(ids), input_mask=jnp.ones(ids.shape, bool))
        with self.mesh:
            step, _ = trainer.jit_train_and_eval_step(cache_nnx_graph=True)
            t0 = time.perf_counter()
            loss, _, _ = step(example)
            loss = float(loss)
        self.sft = (trainer, step, example)
        return {"compile_s": time.perf_counter() - t0, "loss": loss, "tokens_per_step": batch * seq}

    def sft_steps(self, steps: int) -> dict:
        _, step, example = self.sft
        with self.mesh:
            t0 = time.perf_counter()
            for _ in range(steps):
                loss, _, _ = step(example)
            loss = float(jax.block_until_ready(loss))
        return {"step_s": (time.perf_counter() - t0) / steps, "loss": loss}

    # --------------------------------------------------------------------------------------------- decode
    def decode_setup(self, batch: int, prompt: int, new: int) -> dict:
        from tunix.generate import sampler as sampler_lib
        model = build_model()
        cache = sampler_lib.CacheConfig(cache_size=prompt + new, num_layers=SHAPE["layers"],
                                        num_kv_heads=SHAPE["kv_heads"], head_dim=SHAPE["head_dim"])
        sampler = sampler_lib.Sampler(model, IdTokenizer(), cache)
        prompts = prompt_strings(batch, prompt, seed=1)
        self.decode_state = (sampler, prompts, prompt, new)
        t0 = time.perf_counter()
        out = self._generate()
        return {"compile_s": time.perf_counter() - t0, "generated": [len(t) for t in out.tokens]}

    def _generate(self):
        sampler, prompts, prompt, new = self.decode_state
        with self.mesh:
            return sampler(prompts, max_generation_steps=new, max_prompt_length=prompt, temperature=0.0,
                           eos_tokens=[NO_EOS], seed=0)

    def decode(self) -> dict:
        t0 = time.perf_counter()
        out = self._generate()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "generated": int(sum(len(t) for t in out.tokens))}

    # ----------------------------------------------------------------------------------------------- GRPO
    def grpo_step(self, prompts: int, group: int, new: int, prompt: int) -> dict:
        if self.grpo is None:
            self.grpo = self._grpo_start(prompts, group, new, prompt)
        g = self.grpo
        if not g["thread"].is_alive():
            raise RuntimeError("tunix's GRPO learner stopped at an earlier step (see that step's error)")
        g["go"].release()                               # let one more step start
        seconds = g["done"].get()                       # the seconds of the step that just finished
        if isinstance(seconds, BaseException):
            raise seconds
        return {"seconds": seconds}

    def _grpo_start(self, n_prompts: int, group: int, new: int, prompt: int) -> dict:
        import queue

        from tunix.rl import rl_cluster as rl_cluster_lib
        from tunix.rl.grpo import grpo_learner
        from tunix.rl.rollout import base_rollout

        model = build_model()
        tx = optax.adamw(1e-6, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
        training = rl_cluster_lib.RLTrainingConfig(actor_optimizer=tx, eval_every_n_steps=10 ** 9,
                                                   max_steps=10 ** 9)
        rollout = base_rollout.RolloutConfig(max_tokens_to_generate=new, max_prompt_length=prompt,
                                             kv_cache_size=prompt + new, temperature=1.0, eos_tokens=[NO_EOS])
        roles = {r: self.mesh for r in (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
                                        rl_cluster_lib.Role.ROLLOUT)}
        cluster = rl_cluster_lib.RLCluster(
            actor=model, reference=None, tokenizer=IdTokenizer(),
            cluster_config=rl_cluster_lib.ClusterConfig(role_to_mesh=roles, rollout_engine="vanilla",
                                                        offload_to_cpu=False, training_config=training,
                                                        rollout_config=rollout))
        # the objective as ours: clipped surrogate, token-mean aggregation, no KL term (tunix 0.1.7's GRPO clips
        # symmetrically at 1 +- epsilon; the clip range does not change the cost of a step)
        algo = grpo_learner.GRPOConfig(num_generations=group, num_iterations=1, beta=0.0, epsilon=0.2,
                                       loss_agg_mode="token-mean")

        def even_fraction(prompts, completions, **_):
            """The benchmark's reward: the fraction of even ids in the completion (ours uses the same)."""
            out = []
            for c in completions:
                ids = IdTokenizer().encode(c)
                out.append(sum(i % 2 == 0 for i in ids) / max(len(ids), 1))
            return out

        learner = grpo_learner.GRPOLearner(cluster, algo, even_fraction)
        go, done = threading.Semaphore(0), queue.Queue()
        # one array leaf: the learner repeats every leaf of the batch G times along axis 0
        batch = {"prompts": np.array(prompt_strings(n_prompts, prompt, seed=2))}

        def batches():
            go.acquire()
            start = time.perf_counter()
            while True:
                yield batch
                done.put(time.perf_counter() - start)   # the learner asks for the next step's batch: the
                go.acquire()                            # previous step is complete; wait for the next command
                start = time.perf_counter()

        def run():
            try:
                with self.mesh:
                    learner.train(batches())
            except BaseException as e:          # reported to the command that waits for a step
                import traceback
                traceback.print_exc()
                done.put(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return {"go": go, "done": done, "thread": thread}


def main():
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req.pop("cmd")
        try:
            if cmd == "hello":
                import importlib.metadata as md
                answer({"ok": True, "tunix": md.version("google-tunix"), "jax": jax.__version__,
                        "flax": md.version("flax"), "device": str(jax.devices()[0]), "pid": os.getpid()})
            elif cmd == "sft_setup":
                answer({"ok": True, **worker.sft_setup(**req)})
            elif cmd == "sft":
                answer({"ok": True, **worker.sft_steps(**req)})
            elif cmd == "decode_setup":
                answer({"ok": True, **worker.decode_setup(**req)})
            elif cmd == "decode":
                answer({"ok": True, **worker.decode()})
            elif cmd == "grpo":
                answer({"ok": True, **worker.grpo_step(**req)})
            elif cmd == "quit":
                answer({"ok": True})
                break
            else:
                answer({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:          # the driver prints it and stops
            import traceback
            answer({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    OUT.flush()
    os._exit(0)                         # the learner thread may still wait for a batch


if __name__ == "__main__":
    main()

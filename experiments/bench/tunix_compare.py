"""Side by side with google-tunix 0.1.7 on one identical tiny Qwen2, in one run: SFT step, sampler decode and
GRPO step.

    python -m experiments.bench.tunix_compare --setup      # once: tunix in its own venv (.venv-tunix)
    python -m experiments.bench.tunix_compare              # ~5-8 min on 2 cores; prints the three ratios

Model (both sides fp32, 1 CPU device, random weights): Qwen2, vocab 32000, hidden 256, 4 layers, 4 heads / 2 KV
heads (head_dim 64), intermediate 1024, untied embeddings. Ours is oresearcher.model.Decoder; tunix's is its own
tunix.models.qwen2.Qwen2.

  SFT     batch 8 x 512 random tokens, every target counted, AdamW (b2 0.95, no weight decay). Ours: the trainer's
          jitted step (oresearcher.sft.make_train_step: chunked loss, donated state). Tunix: PeftTrainer's jitted
          train step (jit_train_and_eval_step, what PeftTrainer.train calls). tokens/s = 4096 / seconds per step.
  decode  batch 8, a 64-token prompt, 128 new tokens, greedy, EOS never hit. Ours: oresearcher.sampler.Sampler.
          generate; tunix: tunix.generate.sampler.Sampler.__call__. tokens/s = 8 x 128 / seconds of the whole
          call (prefill included; ours in its default CPU layout, the cpu_kernels matmul and attention where
          they are built, recorded as weight_layout). Also timed: the step's weight products alone (every weight
          matrix in the sampler's layout, chained as in a step: 48 MB of fp32 weights streamed per token), a
          floor for our fp32 sampler of this shape on this machine.
  GRPO    one step of 2 prompts x group 4, 64 new tokens at temperature 1, reward = fraction of even ids in the
          completion, group-normalised advantages, clipped surrogate, token-mean, no KL, one AdamW update over
          the 8 episodes. Ours: Sampler.generate -> grpo_advantages -> rollout.to_batch -> rl.train._update
          (grpo.train_step), the RL trainer's own path with minibatches = 1. Tunix: GRPOLearner.train (vanilla
          rollout engine, RLCluster with actor = rollout on one mesh), timed between the learner's successive
          requests for a batch.

Each side is compiled first (untimed); then the repetitions interleave (ours, tunix, ours, tunix, ...) so that
other load on the machine hits both alike, and the medians are compared. The load average is recorded with every
repetition: on a shared machine the absolute figures move a lot, the ratios much less; re-run on an idle machine
for figures to quote. Prints `sft_ratio=`, `decode_ratio=` (ours over tunix, tokens/s) and `grpo_ratio=` (tunix
step seconds over ours), all "higher is better"; targets: SFT >= 1.5, decode >= 2, GRPO >= 1 / 0.67 = 1.49.
Writes experiments/bench/results/tunix_compare.json and tunix_compare.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
WORKER = Path(__file__).parent / "tunix_worker.py"
VENV = ROOT / ".venv-tunix"
TUNIX_VERSION = "0.1.7"
# tunix needs no torch; if anything it pulls ever asked for one, it must be the CPU build, never a CUDA one
CONSTRAINTS = "torch==2.13.0+cpu\n"
TARGETS = {"sft_ratio": 1.5, "decode_ratio": 2.0, "grpo_ratio": 1 / 0.67}

SFT_BATCH, SFT_SEQ = 8, 512
DECODE_BATCH, PROMPT, NEW = 8, 64, 128
GRPO_PROMPTS, GRPO_GROUP, GRPO_NEW = 2, 4, 64


# ------------------------------------------------------------------------------------------------- setup
def setup(venv: Path = VENV, python: str = "python3.11") -> None:
    """Create tunix's own virtual environment and install google-tunix (it pins versions of its own)."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-c", str(constraints),
           f"google-tunix=={TUNIX_VERSION}"]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode:
        raise SystemExit(f"pip could not install google-tunix=={TUNIX_VERSION} into {venv} (exit {proc.returncode}); "
                         f"the error is printed above")
    subprocess.run([str(venv / "bin" / "python"), "-c", "import tunix, jax; print('tunix ok, jax', jax.__version__)"],
                   check=True)


# --------------------------------------------------------------------------------------------- tunix side
class Tunix:
    """The worker process in tunix's venv; one JSON command per line in, one '@@ {json}' line out."""

    def __init__(self, log: Path):
        python = VENV / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"no tunix environment at {VENV}: run `python -m experiments.bench.tunix_compare "
                             f"--setup` first")
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        self.log = log
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, env=env, cwd=str(ROOT))

    def __call__(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                out = json.loads(line[3:])
                if not out.get("ok"):
                    raise RuntimeError(f"tunix worker, command {cmd!r}: {out.get('error')}\n"
                                       f"{out.get('traceback', '')}(log: {self.log})")
                return out
        raise RuntimeError(f"the tunix worker exited during {cmd!r}; its log: {self.log}")

    def close(self):
        try:
            self("quit")
        except (RuntimeError, BrokenPipeError):
            pass
        self.proc.wait(timeout=60)
        self._log_file.close()


# ---------------------------------------------------------------------------------------------- our side
class Ours:
    def __init__(self):
        import jax

        from oresearcher import sharding
        self.jax = jax
        self.mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])

    def model(self, seed: int = 0):
        from flax import nnx

        from experiments.bench.sft_throughput import QWEN2_TUNIX
        from oresearcher import sharding
        from oresearcher.model import Decoder
        model = Decoder(QWEN2_TUNIX, rngs=nnx.Rngs(seed))
        sharding.shard_model(model, self.mesh)
        return model

    # SFT
    def sft_setup(self) -> dict:
        import numpy as np

        from experiments.bench.sft_throughput import _optim_config
        from oresearcher import optim, sft
        model = self.model()
        tx, schedule = optim.make_optimizer(_optim_config(), 10 ** 6)
        ts = sft.make_train_step(model, tx, schedule, self.mesh, batch_shape=(SFT_BATCH, SFT_SEQ))
        rng = np.random.default_rng(0)
        ids = rng.integers(0, model.cfg.vocab_size, size=(SFT_BATCH, SFT_SEQ + 1)).astype(np.int32)
        self.sft_batch = ts.put_batch({
            "input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((SFT_BATCH, SFT_SEQ), bool),
            "positions": np.broadcast_to(np.arange(SFT_SEQ, dtype=np.int32), (SFT_BATCH, SFT_SEQ)),
            "segment_ids": np.ones((SFT_BATCH, SFT_SEQ), np.int32)})
        self.ts, self.sft_state = ts, ts.state
        t0 = time.perf_counter()
        loss = self.sft_steps(1)["loss"]
        return {"compile_s": time.perf_counter() - t0, "loss": loss}

    def sft_steps(self, steps: int) -> dict:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.sft_state, metrics = self.ts.step(self.sft_state, self.sft_batch)
        loss = float(self.jax.block_until_ready(metrics["loss"]))
        return {"step_s": (time.perf_counter() - t0) / steps, "loss": loss}

    # decode
    def decode_setup(self) -> dict:
        import numpy as np

        from oresearcher.sampler import Sampler, SamplingParams
        model = self.model()
        self.sampler = Sampler(model, None, eos_ids=())
        rng = np.random.default_rng(1)
        self.prompts = [rng.integers(1, model.cfg.vocab_size, PROMPT).tolist() for _ in range(DECODE_BATCH)]
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=NEW, stop=())
        t0 = time.perf_counter()
        out = self.sampler.generate(self.prompts, self.greedy)
        return {"compile_s": time.perf_counter() - t0, "generated": [len(o.tokens) for o in out],
                "weight_layout": self.sampler.weight_layout}

    def decode_floor(self) -> dict:
        """The decode step's weight products alone (experiments/bench/decode_floor.py): a floor per token step."""
        from experiments.bench.decode_floor import weight_products
        floor = weight_products(self.sampler, DECODE_BATCH)
        return {**floor, "floor_s": floor["weight_products_per_step_s"] * NEW}

    def decode(self) -> dict:
        t0 = time.perf_counter()
        out = self.sampler.generate(self.prompts, self.greedy)
        return {"seconds": time.perf_counter() - t0, "generated": sum(len(o.tokens) for o in out)}

    # GRPO
    def grpo_setup(self) -> dict:
        import numpy as np

        from oresearcher.rl import grpo
        from oresearcher.rl.train import make_optimizer
        from oresearcher.sampler import Sampler
        spec = importlib.util.spec_from_file_location("rl_configs", ROOT / "configs" / "rl.py")
        configs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(configs)
        config = configs.get_config()
        config.grpo.minibatches = 1          # one update over the whole rollout batch, as tunix's default
        config.rollout.group_size = GRPO_GROUP
        self.config = config
        self.policy = self.model()
        self.optimizer = make_optimizer(self.policy, config)
        self.gcfg = grpo.GRPOConfig.from_config(config)
        self.grpo_sampler = Sampler(self.policy, None, eos_ids=())
        rng = np.random.default_rng(2)
        self.questions = [rng.integers(1, self.policy.cfg.vocab_size, PROMPT).tolist() for _ in range(GRPO_PROMPTS)]
        self.grpo_steps = 0
        t0 = time.perf_counter()
        out = self.grpo_step()
        return {"compile_s": time.perf_counter() - t0, **out}

    def grpo_step(self) -> dict:
        import numpy as np

        from oresearcher.rl import grpo
        from oresearcher.rl.rollout import Episode
        from oresearcher.rl.train import _update
        from oresearcher.sampler import SamplingParams
        self.grpo_steps += 1
        t0 = time.perf_counter()
        params = SamplingParams(temperature=float(self.config.rollout.temperature), top_p=1.0,
                                max_new_tokens=GRPO_NEW, stop=(), seed=self.grpo_steps)
        prompts = [q for q in self.questions for _ in range(GRPO_GROUP)]
        with self.jax.set_mesh(self.mesh):
            outs = self.grpo_sampler.generate(prompts, params)
            episodes = [Episode("", i // GRPO_GROUP, PROMPT, p + o.tokens, [False] * PROMPT + [True] * len(o.tokens),
                                [0.0] * PROMPT + o.logprobs) for i, (p, o) in enumerate(zip(prompts, outs))]
            rewards = np.array([sum(t % 2 == 0 for t in o.tokens) / max(len(o.tokens), 1) for o in outs])
            adv, keep = grpo.get_advantage_estimator(self.config.grpo.advantage)(
                rewards.reshape(GRPO_PROMPTS, GRPO_GROUP), np.ones((GRPO_PROMPTS, GRPO_GROUP), bool))
            metrics = _update(self.policy, self.optimizer, None, episodes, adv.reshape(-1), keep.reshape(-1),
                              self.gcfg, self.config, self.mesh, np.random.default_rng(self.grpo_steps))
        return {"seconds": time.perf_counter() - t0, "loss": metrics.get("train/loss"),
                "generated": sum(len(o.tokens) for o in outs)}


# -------------------------------------------------------------------------------------------------- run
def _interleave(name: str, reps: int, ours, theirs, key: str) -> dict:
    rows = []
    for i in range(reps):
        a = ours()
        b = theirs()
        rows.append({"rep": i, "ours": a, "tunix": b, "load_average": os.getloadavg()})
        print(f"  {name} rep {i}: ours {a[key]:.3f} s | tunix {b[key]:.3f} s | load {os.getloadavg()[0]:.2f}",
              flush=True)
    return {"reps": rows, "ours_median_s": statistics.median(r["ours"][key] for r in rows),
            "tunix_median_s": statistics.median(r["tunix"][key] for r in rows)}


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in ("sft_ratio", "decode_ratio", "grpo_ratio") if n in report["ratios"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    vals = [report["ratios"][n] for n in names]
    bars = ax.bar(names, vals, color=["tab:green" if report["met"][n] else "tab:red" for n in names])
    for bar, n, v in zip(bars, names, vals):
        ax.hlines(TARGETS[n], bar.get_x(), bar.get_x() + bar.get_width(), colors="black", linestyles="--")
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}x", ha="center", va="bottom")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("ours / tunix (higher is better)")
    load = report["load_average_before"][0]
    ax.set_title(f"vs google-tunix {report['tunix']['tunix']}, tiny Qwen2, CPU (load {load:.1f})\n"
                 f"dashed: target", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="create .venv-tunix and install google-tunix, then exit")
    parser.add_argument("--parts", default="sft,decode,grpo")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per part (medians compared)")
    parser.add_argument("--sft_steps", type=int, default=2, help="SFT steps timed per repetition")
    parser.add_argument("--out", default=str(RESULTS / "tunix_compare.json"))
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    sys.path.insert(0, str(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)

    import jax
    tunix = Tunix(Path(tempfile.gettempdir()) / "tunix_worker.log")
    ours = Ours()
    report = {"benchmark": "tunix_compare", "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "jax": jax.__version__, "tunix": tunix("hello"),
              "load_average_before": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "note": "a shared machine: compare ratios, and re-run on an idle machine for absolute figures",
              "parts": {}, "ratios": {}, "targets": TARGETS, "met": {}}
    print(f"tunix {report['tunix']['tunix']} (jax {report['tunix']['jax']}) vs ours (jax {jax.__version__}), "
          f"load average {report['load_average_before']}", flush=True)
    try:
        if "sft" in parts:
            print(f"SFT step, batch {SFT_BATCH} x {SFT_SEQ}: compiling ...", flush=True)
            part = {"ours_setup": ours.sft_setup(), "tunix_setup": tunix("sft_setup", batch=SFT_BATCH, seq=SFT_SEQ)}
            part.update(_interleave("sft", args.reps, lambda: ours.sft_steps(args.sft_steps),
                                    lambda: tunix("sft", steps=args.sft_steps), "step_s"))
            tokens = SFT_BATCH * SFT_SEQ
            part["ours_tokens_per_s"] = tokens / part["ours_median_s"]
            part["tunix_tokens_per_s"] = tokens / part["tunix_median_s"]
            report["ratios"]["sft_ratio"] = part["ours_tokens_per_s"] / part["tunix_tokens_per_s"]
            report["parts"]["sft"] = part
            print(f"SFT: ours {part['ours_tokens_per_s']:.0f} tok/s | tunix {part['tunix_tokens_per_s']:.0f} tok/s",
                  flush=True)
        if "decode" in parts:
            print(f"decode, batch {DECODE_BATCH}, prompt {PROMPT}, {NEW} new, greedy: compiling ...", flush=True)
            part = {"ours_setup": ours.decode_setup(),
                    "tunix_setup": tunix("decode_setup", batch=DECODE_BATCH, prompt=PROMPT, new=NEW)}
            part.update(_interleave("decode", args.reps, ours.decode, lambda: tunix("decode"), "seconds"))
            part["weight_streaming_floor"] = ours.decode_floor()
            tokens = DECODE_BATCH * NEW
            part["ours_tokens_per_s"] = tokens / part["ours_median_s"]
            part["tunix_tokens_per_s"] = tokens / part["tunix_median_s"]
            report["ratios"]["decode_ratio"] = part["ours_tokens_per_s"] / part["tunix_tokens_per_s"]
            report["parts"]["decode"] = part
            floor = part["weight_streaming_floor"]
            print(f"decode: ours {part['ours_tokens_per_s']:.0f} tok/s | tunix {part['tunix_tokens_per_s']:.0f} "
                  f"tok/s | weight products alone {floor['floor_tokens_per_s']:.0f} tok/s "
                  f"({floor['weights_mb']:.0f} MB per step at {floor['implied_gb_s']:.1f} GB/s)", flush=True)
        if "grpo" in parts:
            print(f"GRPO step, {GRPO_PROMPTS} prompts x group {GRPO_GROUP}, {GRPO_NEW} new: compiling ...", flush=True)
            kw = dict(prompts=GRPO_PROMPTS, group=GRPO_GROUP, new=GRPO_NEW, prompt=PROMPT)
            part = {"ours_setup": ours.grpo_setup(), "tunix_setup": tunix("grpo", **kw)}
            # a second untimed step on both sides: ours recompiles the update once when the optimizer's output
            # shardings first differ from the freshly built state's, tunix's learner settles its state too
            part["ours_warmup"], part["tunix_warmup"] = ours.grpo_step(), tunix("grpo", **kw)
            part.update(_interleave("grpo", args.reps, ours.grpo_step, lambda: tunix("grpo", **kw), "seconds"))
            report["ratios"]["grpo_ratio"] = part["tunix_median_s"] / part["ours_median_s"]
            report["parts"]["grpo"] = part
            print(f"GRPO step: ours {part['ours_median_s']:.2f} s | tunix {part['tunix_median_s']:.2f} s", flush=True)
    finally:
        tunix.close()
    report["load_average_after"] = os.getloadavg()
    for name, value in report["ratios"].items():
        report["met"][name] = value >= TARGETS[name]
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']} "
          f"(a shared machine: re-run idle for figures to quote)")
    for name, value in report["ratios"].items():
        print(f"{name}={value:.2f}  (target >= {TARGETS[name]:.2f}: {'met' if report['met'][name] else 'NOT met'})")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    main()

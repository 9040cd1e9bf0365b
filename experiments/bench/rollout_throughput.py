"""Multi-turn rollout throughput: the engine (continuous batching, parked tool calls) against the lockstep sampler
(rows decoded until all stop, then every call sent and the slowest waited for), on the embedded SmolLM2-135M on
CPU with a tool server on loopback.

    python -m experiments.bench.rollout_throughput [--episodes 32] [--slots 8] [--seed 0]

Both run the same 32 episodes greedily: the RL prompt (system prompt + a question from configs/rl_questions.jsonl),
then turns. Episode i has its own number of turns (1-5) and tokens per turn (8-64), so episodes differ in length;
a turn also ends at a protocol stop string or EOS (EOS ends the episode). Between turns the episode calls the
loopback tool server, which answers after a delay drawn per call from a lognormal distribution (median 0.5 s,
p95 3 s, as web searches and page reads are) with an observation of 24-96 tokens. The delays are drawn once and
both drivers see the same ones. The lockstep driver runs the episodes in batches of `--slots` rows (one Sampler
session each, as rl/rollout.py did); the engine has `--slots` slots and a queue of all episodes.

Each driver runs the whole workload twice: the first run compiles (every shape it will meet), the second is timed.
Prints episodes_per_s_engine=, episodes_per_s_lockstep=, engine_over_lockstep= (target >= 2.5),
slot_occupancy= (time-weighted share of the engine's slots holding an episode), and tokens_equal=1 when every
greedy episode is the same token for token in both. Writes experiments/bench/results/rollout_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
os.environ.setdefault("JAX_PLATFORMS", "cpu")


class _Tools(BaseHTTPRequestHandler):
    """POST {"delay": s, "observation": text} -> {"observation": text} after `delay` seconds."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(body["delay"])
        data = json.dumps({"observation": body["observation"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


class ScriptedAgent:
    """Episode i: turns[i] turns of budgets[i] tokens; call k of episode i waits delays[i][k] seconds and returns
    observations[i][k] (token ids)."""

    def __init__(self, url, turns, budgets, delays, observations):
        self.url, self.turns, self.budgets, self.delays, self.observations = url, turns, budgets, delays, observations
        self.tokens = {i: [] for i in range(len(turns))}
        self.done_turns = [0] * len(turns)

    def budget(self, i):
        return self.budgets[i]

    def on_turn(self, i, out):
        self.tokens[i].extend(out.tokens)
        k = self.done_turns[i]
        self.done_turns[i] += 1
        if out.finish_reason == "eos" or self.done_turns[i] >= self.turns[i]:
            return None

        async def call(client):
            r = await client.post(self.url, json={"delay": self.delays[i][k], "observation": ""}, timeout=60)
            r.raise_for_status()
            return k
        return call

    def on_result(self, i, k):
        obs = self.observations[i][k]
        self.tokens[i].extend(obs)
        return obs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=2048)
    args = parser.parse_args()

    import jax

    from oresearcher import protocol
    from oresearcher.engine import Engine
    from oresearcher.engine.agent import run_lockstep
    from oresearcher.model import load_gguf
    from oresearcher.rl.rollout import build_prompt
    from oresearcher.sampler import Sampler, SamplingParams

    load_before = os.getloadavg()
    model, tokenizer = load_gguf()
    rng = np.random.default_rng(args.seed)
    lines = (Path(__file__).resolve().parents[2] / "configs" / "rl_questions.jsonl").read_text().splitlines()
    questions = [json.loads(x)["question"] for x in lines if x.strip()]
    prompts = [build_prompt(tokenizer, questions[i % len(questions)]) for i in range(args.episodes)]
    turns = [int(t) for t in rng.integers(1, 6, args.episodes)]
    budgets = [int(b) for b in rng.integers(8, 65, args.episodes)]
    sigma = np.log(6.0) / 1.645             # p95 / median = 6: median 0.5 s, p95 3 s
    delays = [[float(d) for d in 0.5 * np.exp(sigma * rng.standard_normal(5))] for _ in range(args.episodes)]
    words = "the results name several sources and give dates figures and places for the question".split()
    observations = [[tokenizer.encode(protocol.observation(" ".join(rng.choice(words, int(rng.integers(16, 80))))))
                     for _ in range(5)] for _ in range(args.episodes)]

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tools)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    params = SamplingParams(temperature=0.0, stop=protocol.STOP_STRINGS)
    engine = Engine(model, tokenizer, slots=args.slots)
    sampler = Sampler(model, tokenizer)

    def run_engine():
        agent = ScriptedAgent(url, turns, budgets, delays, observations)
        start = time.perf_counter()
        stats = engine.run(prompts, agent, params, max_len=args.max_len)
        return time.perf_counter() - start, agent, stats

    def run_lock():
        agent = ScriptedAgent(url, turns, budgets, delays, observations)
        start = time.perf_counter()
        for b in range(0, args.episodes, args.slots):
            rows = list(range(b, min(b + args.slots, args.episodes)))
            sub = _Offset(agent, b)
            run_lockstep(sampler, [prompts[i] for i in rows], sub, params, max_len=args.max_len)
        return time.perf_counter() - start, agent, None

    figures = {}
    for name, fn in (("engine", run_engine), ("lockstep", run_lock)):
        compile_s = fn()[0]
        seconds, agent, stats = fn()
        figures[name] = {"seconds": seconds, "compile_run_seconds": compile_s, "tokens": agent.tokens,
                         "stats": stats}
        print(f"{name}: {seconds:.1f}s ({args.episodes / seconds:.3f} episodes/s; first run {compile_s:.1f}s)",
              flush=True)
    server.shutdown()

    eng, lock = figures["engine"], figures["lockstep"]
    equal = all(eng["tokens"][i] == lock["tokens"][i] for i in range(args.episodes))
    stats = {k: v for k, v in eng["stats"].items() if k != "spans"}
    result = {
        "title": "rollout_throughput",
        "description": "Multi-turn episodes with a loopback tool server (lognormal latency, median 0.5 s, p95 3 s): "
                       "the engine (continuous batching, parked tool calls) against the lockstep sampler, greedy, "
                       "on SmolLM2-135M; the second of two runs of each is timed.",
        "command": "python -m experiments.bench.rollout_throughput" + (
            f" --episodes {args.episodes} --slots {args.slots} --seed {args.seed} --max-len {args.max_len}"),
        "episodes": args.episodes, "slots": args.slots, "seed": args.seed, "max_len": args.max_len,
        "episodes_per_s_engine": args.episodes / eng["seconds"],
        "episodes_per_s_lockstep": args.episodes / lock["seconds"],
        "engine_over_lockstep": lock["seconds"] / eng["seconds"],
        "slot_occupancy": stats["slot_occupancy"], "decode_rows": stats["decode_rows"],
        "tokens_equal": int(equal), "engine_seconds": eng["seconds"], "lockstep_seconds": lock["seconds"],
        "generated_tokens": sum(len(t) for t in eng["tokens"].values()),
        "tool_seconds_total": float(sum(d for i in range(args.episodes) for d in delays[i][:turns[i] - 1])),
        "engine_stats": stats, "platform": platform.platform(), "cpus": os.cpu_count(),
        "device": f"{jax.devices()[0].platform} ({os.cpu_count()} cores)", "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    for key in ("episodes_per_s_engine", "episodes_per_s_lockstep", "engine_over_lockstep", "slot_occupancy",
                "tokens_equal"):
        value = result[key]
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


class _Offset:
    """An agent seen through a batch: row r of the session is episode offset + r."""

    def __init__(self, agent, offset):
        self.agent, self.offset = agent, offset

    def budget(self, r):
        return self.agent.budget(self.offset + r)

    def on_turn(self, r, out):
        return self.agent.on_turn(self.offset + r, out)

    def on_result(self, r, result):
        return self.agent.on_result(self.offset + r, result)


if __name__ == "__main__":
    main()

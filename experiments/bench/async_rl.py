"""Asynchronous GRPO (max_staleness=1) against the synchronous loop, with the latency of real tools and an LLM
judge: the same preset, the same starting policy, the same steps (so the same number of trained episodes).

    python -m experiments.bench.async_rl [--preset tiny] [--steps 8] [--judge-s 2.0] [--tool-median-s 0.5]

The synth service (the real one, a subprocess) sits behind a loopback proxy that holds every web_search and
crawl_page call for a delay drawn from a lognormal distribution (median 0.5 s, p95 3 s, like web searches and page
reads) and every judge call for 2 s (an LLM judge), then forwards it. The warm start runs once; both loops start
from its policy. Step 1 compiles and is sampled synchronously by both, so the wall time compared is the sum of
`time/step` over steps 2..N of each run.

Prints async_over_sync= (target <= 0.6), the mean time split of a step of each, and reward_last_sync= /
reward_last_async= (the mean reward of the last half of the steps: learning must not suffer). The ratio depends on
how the time of a step splits between rollout + judge (which the asynchronous loop hides behind the update) and the
update: it is at best max(rollout + judge, update) / (rollout + judge + update). Writes
experiments/bench/results/async_rl.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: FastAPI reads the route's annotations from this module

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"


class LatencyProxy:
    """A loopback HTTP proxy in front of the synth service that delays tool and judge calls (in this process, on
    its own thread)."""

    def __init__(self, upstream: str, tool_median_s: float, tool_p95_s: float, judge_s: float, seed: int = 0):
        import httpx
        from fastapi import FastAPI, Response

        from experiments.loopback import LocalServer

        sigma = float(np.log(tool_p95_s / tool_median_s) / 1.6449)   # p95 of a lognormal: median * e^(1.645 s)
        rng = np.random.default_rng(seed)
        self.delays: list[tuple[str, float]] = []
        app = FastAPI()
        client = httpx.AsyncClient(base_url=upstream, timeout=600)

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(path: str, request: Request):
            kind = path.rsplit("/", 1)[-1]
            delay = (judge_s if kind == "judge" else
                     float(tool_median_s * np.exp(sigma * rng.standard_normal()))
                     if kind in ("web_search", "crawl_page") else 0.0)
            if delay:
                self.delays.append((kind, delay))
                await asyncio.sleep(delay)
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            r = await client.request(request.method, "/" + path, content=await request.body(), headers=headers)
            return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

        self._server = LocalServer(app).start()
        self.url = self._server.url

    def close(self):
        self._server.stop()


def _train(workdir: Path, preset: str, *flags: str) -> list[dict]:
    cmd = [sys.executable, "-m", "oresearcher.train", f"--config=configs/rl.py:{preset}",
           f"--config.workdir={workdir}", *flags]
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}")
    for line in done.stdout.splitlines():
        if line.startswith("step "):
            print("  " + line, flush=True)
    path = workdir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tool-median-s", type=float, default=0.5)
    parser.add_argument("--tool-p95-s", type=float, default=3.0)
    parser.add_argument("--judge-s", type=float, default=2.0)
    parser.add_argument("--workdir", default="/tmp/oresearcher/bench_async_rl")
    parser.add_argument("--flag", action="append", default=[], help="a further --config.KEY=VALUE for both runs")
    args = parser.parse_args()

    from ml_collections import ConfigDict

    from oresearcher.rl.synth_service import synth_service

    work = Path(args.workdir)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    # the warm start, once (and one GRPO step, not compared): its policy is left in warm_start/policy
    _train(work / "warm", args.preset, "--config.total_steps=1", *args.flag)
    start = work / "warm" / "warm_start" / "policy"

    runs = {}
    service = ConfigDict({"synth_config": "configs/synth.py", "workdir": str(work), "synth_start_timeout_s": 600})
    with synth_service(service) as upstream:
        proxy = LatencyProxy(upstream, args.tool_median_s, args.tool_p95_s, args.judge_s)
        try:
            for name, staleness in (("sync", 0), ("async", 1)):
                t0 = time.perf_counter()
                rows = _train(work / name, args.preset, f"--config.total_steps={args.steps}",
                              f"--config.max_staleness={staleness}", f"--config.init_checkpoint={start}",
                              f"--config.synth_url={proxy.url}", "--config.rollout.backend=engine",
                              "--config.checkpoint_every=1000", *args.flag)
                runs[name] = {"rows": rows, "wall_s": time.perf_counter() - t0}
        finally:
            proxy.close()

    def summary(rows):
        timed = rows[1:]
        keys = ("time/step", "time/rollout", "time/generate", "time/tools", "time/judge", "time/train",
                "time/wait_rollout")
        half = rows[len(rows) // 2:]
        return {"steps_timed": len(timed), "wall_steps_2_on_s": float(sum(r["time/step"] for r in timed)),
                **{f"mean_{k}": float(np.mean([r.get(k, 0.0) for r in timed])) for k in keys},
                "reward_last": float(np.mean([r["reward"] for r in half])),
                "staleness": [r.get("staleness", 0) for r in rows]}

    sync, lagged = summary(runs["sync"]["rows"]), summary(runs["async"]["rows"])
    result = {
        "title": "Asynchronous GRPO against the synchronous loop (tool and judge latency injected)",
        "description": "Asynchronous GRPO (max_staleness=1) against the synchronous loop on the same preset and "
                       "starting policy, tools delayed lognormally (median/p95 below) and the judge by a fixed "
                       "delay, through a loopback proxy in front of the real synth service; wall = sum of "
                       "time/step over steps 2..N. Per step: rollout = sampling + tools + judge of a step "
                       "(on the rollout thread when asynchronous), train = the update, waited = what the trainer "
                       "still waited for the rollout.",
        "command": "python -m experiments.bench.async_rl " + " ".join(sys.argv[1:]),
        "rows": [{"loop": name, **{k: v for k, v in s.items() if k != "staleness"},
                  "staleness": " ".join(map(str, s["staleness"]))} for name, s in (("sync", sync), ("async", lagged))],
        "summary": {"preset": args.preset, "steps": args.steps, "tool_median_s": args.tool_median_s,
                    "tool_p95_s": args.tool_p95_s, "judge_s": args.judge_s, "flags": " ".join(args.flag),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_after": os.getloadavg()[0],
                    "async_over_sync": lagged["wall_steps_2_on_s"] / sync["wall_steps_2_on_s"],
                    "target": "async_over_sync <= 0.6",
                    "reward_last_sync": sync["reward_last"], "reward_last_async": lagged["reward_last"]},
    }
    for name, s in (("sync", sync), ("async", lagged)):
        print(f"{name:>5}: steps 2..{args.steps} {s['wall_steps_2_on_s']:.1f}s; per step: rollout "
              f"{s['mean_time/rollout']:.1f}s (generate {s['mean_time/generate']:.1f}s tools "
              f"{s['mean_time/tools']:.1f}s judge {s['mean_time/judge']:.1f}s) train {s['mean_time/train']:.1f}s "
              f"waited for the rollout {s['mean_time/wait_rollout']:.1f}s; staleness {s['staleness']}")
    print(f"async_over_sync={result['summary']['async_over_sync']:.3f}")
    print(f"reward_last_sync={sync['reward_last']:.3f}")
    print(f"reward_last_async={lagged['reward_last']:.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "async_rl.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

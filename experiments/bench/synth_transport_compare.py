"""CPU per trajectory of the synthesizer before and after a change, back to back on the same settings:
`python experiments/bench/synth_transport_compare.py --before DIR [--latency 0.2 --repeats 3]`.

DIR is a checkout of the earlier code (e.g. `git worktree add --detach /tmp/before <commit>`). This checkout's
experiments/bench/synth_throughput.py measures DIR's synth/ and oresearcher/ first (its --code), then this
checkout's, each in one process with the same arguments (the scripted LLM server, scripted teacher, warm-up and
interleaved repeats are that benchmark's, the same for both sides); their figures are
written side by side to experiments/bench/results/synth_transport_compare.json, with the load average around
each run: the machine may be shared, and both runs see the same load only when they follow each other.
First written for the LLM client's move from a hand-written HTTP/1.1 client to httpx (target: after within 20%
of before).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
FIGURES = ("cpu_ms_per_trajectory", "cpu_ms_one_question", "own_code_cpu_ms_per_trajectory", "throughput_x",
           "64_questions_wall_s", "one_question_wall_s")


def git(checkout: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True).stdout.strip()


def run(checkout: pathlib.Path, bench_args: list[str], out: pathlib.Path) -> dict:
    """One run of `checkout`'s synth benchmark -> its figures, commit and load average."""
    load = os.getloadavg()
    command = [sys.executable, str(REPO / "experiments/bench/synth_throughput.py"), *bench_args,
               "--code", str(checkout), "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    return {"commit": git(checkout, "rev-parse", "--short", "HEAD"),
            **{k: result.get(k) for k in FIGURES},
            "loadavg_1m_before_run": round(load[0], 2), "loadavg_1m_after_run": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=pathlib.Path, help="checkout of the earlier code")
    ap.add_argument("--before-label", default="synth/http1.py (hand-written HTTP/1.1)")
    ap.add_argument("--after-label", default="httpx.AsyncClient")
    ap.add_argument("--latency", default="0.2")
    ap.add_argument("--repeats", default="3")
    ap.add_argument("--cache-dir", default="/tmp/oresearcher-bench-cache")
    ap.add_argument("--out", default=str(REPO / "experiments/bench/results/synth_transport_compare.json"))
    args = ap.parse_args()
    if not (args.before / "synth" / "llm.py").is_file():
        raise SystemExit(f"--before {args.before}: no synth/llm.py there; give a checkout of the earlier commit "
                         "(git worktree add --detach DIR COMMIT)")
    # One tool cache for both runs (each warms it up before its clock starts anyway).
    bench_args = ["--latency", args.latency, "--repeats", args.repeats, "--cache-dir", args.cache_dir]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        before = run(args.before.resolve(), bench_args, pathlib.Path(tmp) / "before.json")
        after = run(REPO, bench_args, pathlib.Path(tmp) / "after.json")
    ratio = after["cpu_ms_per_trajectory"] / before["cpu_ms_per_trajectory"]
    result = {
        "title": "Synthesizer CPU per trajectory: LLM client transport before and after",
        "description": "experiments/bench/synth_throughput.py (openai teacher against its scripted loopback LLM "
                       "server, 64 questions in flight; CPU of the synthesizer processes only) measuring the "
                       "earlier commit's code, then this one's, back to back with the same arguments. Medians of "
                       "the benchmark's repeats. The machine's 1-minute load average is given around each run.",
        "command": " ".join(shlex.quote(a) for a in ["python", "experiments/bench/synth_transport_compare.py",
                                                       *sys.argv[1:]]),
        "rows": [{"transport": args.before_label, **before}, {"transport": args.after_label, **after}],
        "after_vs_before_cpu_per_trajectory": round(ratio, 3),
        "target": "after within 20% of before (ratio <= 1.2)",
        "within_target": ratio <= 1.2,
        "machine": {"cpus": os.cpu_count(), "started_utc": started},
    }
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

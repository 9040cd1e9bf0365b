"""Synthesizer throughput with a slow teacher: `python experiments/bench/synth_throughput.py [--latency 0.2]`.

A scripted OpenAI-compatible server (a few lines of asyncio below, in its own process(es) so its CPU is not ours)
plays planner (4 sub-questions), researchers (search, read, search, read, answer) and summarizer, adding
`latency` seconds to every call. The openai teacher runs against it with the embedded local tools and the
heuristic judge, on the event loop the CLI uses. A warm-up pass over every question fills the tool caches;
then each figure is measured `--repeats` times (interleaved) and the median is written.

Measured (written to experiments/bench/results/synth_throughput.json):
  throughput_x     questions/s with 64 questions in flight vs 1 at a time          (target >= 55x), both
                   through the same synthesizer: `--processes` worker processes (synth/pool.py, the config's
                   workflow.processes; default one per CPU), started and warmed before the clock
  parallel_vs_sequential   wall time of one 4-subtask question, parallel / sequential mode  (target <= 0.35x)
  cpu_ms_per_trajectory    CPU seconds of this process (our code + HTTP + local tools; the LLM server and
                           every wait excluded) per accepted trajectory, in the 64-question run
  own_code_cpu_ms_per_trajectory   of that, the part spent in our own code (synth/, oresearcher/): the
                           cpu_ms_per_trajectory times the share of cProfile self time in their functions,
                           from a separate profiled 64-question run; the profile's consumers by package are
                           listed under cpu_by_package_ms_per_trajectory
The machine's CPU count, load average and the run-queue wait of both processes are recorded: on a shared
machine the figures are pessimistic. The committed results hold a run on the shared 2-core development machine
(top level) and one on an otherwise idle 16-core host (`--section idle_16_core_host`).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import pathlib
import platform
import re
import socket
import statistics
import sys
import time

sys.modules.setdefault("jax", None)   # bm25s would import JAX for top-k; the synthesizer never needs it
REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
CODE = REPO   # the checkout whose synth/ and oresearcher/ are measured (--code)
from scripted_openai import role_turns  # noqa: E402  (the chat after a role's prompt and worked examples)

_URL = re.compile(r"\((https?://[^)\s]+)\)")
_READ = re.compile(r"<crawl_page>\s*url=(\S+?)&goal=")


def teacher(request: dict) -> str:
    """Planner: 4 sub-questions; researcher: search, read, search, read, cited answer; summarizer: cites all."""
    role, turns = role_turns(request["messages"])      # the chat after the role's prompt and examples
    if role == "planner":
        q = turns[0]["content"].rstrip("?")
        return "\n".join(f"- {facet} of: {q}?" for facet in ("Background", "Mechanisms", "Evidence", "Impact"))
    if role == "summarizer":
        numbers = re.findall(r"^\[(\d+)\]\.", turns[0]["content"], re.MULTILINE)
        cites = " ".join(f"Finding {n} is documented [{n}]." for n in numbers)
        return f"# Report\nThis report sums up the findings.\n\n## Findings\n{cites}\n\n## Conclusion\nDone [1]."
    observations = [m["content"] for m in turns if m["role"] == "user" and m["content"].startswith("<observation>")]
    sub = turns[0]["content"].split("Sub-question: ", 1)[1].split("\n", 1)[0].replace("?", "")
    n = len(observations)
    if n in (0, 2):   # two different searches: a repeated call is not a distinct one (protocol.tool_n)
        query = sub if n == 0 else f"{sub} evidence"
        return (f"<think>\nStep {n}: sources for {sub}\n</think>\n<plan>\nSearch.\n</plan>\n"
                f"<web_search>query={query}&num=3")
    # The last URL not read yet, from the last observation showing one (read from the end): two reads of one
    # page would be one distinct call, below the tool band the funnel accepts.
    read = {u for m in turns if m["role"] == "assistant" for u in _READ.findall(m["content"])}
    url = next((fresh[-1] for o in reversed(observations)
                if (fresh := [u for u in _URL.findall(o) if u not in read])), None)
    if n in (1, 3) and url:
        return f"<think>\nRead {url}.\n</think>\n<crawl_page>url={url}&goal={sub}"
    if not url:   # nothing found yet: search with the first words only
        return f"<think>\nNo results.\n</think>\n<web_search>query={' '.join(sub.split()[-3:])}&num=3"
    return (f"<think>\nAnswered.\n</think>\n<subtask_answer>\nThe page covers {sub} [1].\n\n[1]. {url} - "
            f"Source\n</subtask_answer>")


@functools.lru_cache(maxsize=8192)
def words(content: str) -> int:
    """Whitespace-separated words of a message (the usage count); the chat heads and earlier turns repeat."""
    return len(content.split())


def chat_completion(request: dict) -> dict:
    """The OpenAI-compatible answer to one chat request: `teacher`'s text cut at the request's stop strings."""
    text = teacher(request)
    for stop in request.get("stop") or []:
        if stop in text:
            text = text[: text.index(stop)]
    prompt = sum(words(str(m.get("content", ""))) for m in request["messages"])
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "scripted"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                      "total_tokens": prompt + len(text.split())}}


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection answering each POST /v1/chat/completions `latency` seconds after its
    request arrived (requests are parsed, JSON included, as they arrive; answers go out in request order).

    A few lines of asyncio instead of tests/scripted_openai.py's FastAPI app: on a 2-core machine that app's
    per-request CPU would be a large part of what the benchmark measures, and it is not our code. A protocol
    with a timer per request rather than a stream reader and a sleeping task per connection: the server shares
    the 2 cores with the client, and a hosted LLM's front end does not queue requests behind its own CPU."""

    def __init__(self, latency: float):
        self.latency = latency
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return   # the body is still on its way
            body, self.buffer = self.buffer[end + 4: end + 4 + length], self.buffer[end + 4 + length:]
            request = json.loads(body) if length else {}
            asyncio.get_running_loop().call_later(self.latency, self.answer, request)

    def answer(self, request: dict) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(chat_completion(request)).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))


def serve(latency: float, listener: socket.socket, ready) -> None:
    """One process of the scripted LLM server, accepting on the shared `listener` (uvloop when installed)."""
    async def main():
        server = await asyncio.get_running_loop().create_server(lambda: Connection(latency), sock=listener)
        ready.put(os.getpid())
        await server.serve_forever()

    run_loop(main())


def start_servers(latency: float, processes: int) -> tuple[str, list]:
    """`processes` server processes sharing one listening socket: the kernel spreads connections over them, so
    the server's own CPU (parsing 256 requests that arrive together) is not one serial queue, as it would not be
    at a hosted LLM provider. Returns (base_url, processes)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    context = multiprocessing.get_context("fork")
    ready = context.Queue()
    workers = [context.Process(target=serve, args=(latency, listener, ready), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=60)
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1", workers


def run_loop(coroutine):
    """The event loop the CLI uses (synth.funnel.run_async: uvloop when installed)."""
    from synth.funnel import run_async
    return run_async(coroutine)


def loop_name() -> str:
    try:
        import uvloop
        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio"


def synth_config(base_url: str, cache_dir: str, **overrides):
    from synth.config import load_config
    return load_config("configs/synth.py", {
        "teacher.kind": "openai", "tools.cache_dir": cache_dir, "workflow.candidates": 1,
        "teacher.endpoints": [{"base_url": base_url, "model": "scripted", "max_concurrency": 1024}],
        **overrides})


SERVER_PIDS: list[int] = []   # the scripted LLM server's processes, for their CPU and run-queue wait


def schedstat(pids) -> tuple[float, float]:
    """(CPU seconds, seconds runnable but waiting for a CPU) summed over the main threads of `pids` (Linux
    schedstat; zeros elsewhere). The wait is the part of the wall time that other work took from the benchmark."""
    cpu = wait = 0.0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()
            cpu, wait = cpu + int(fields[0]) / 1e9, wait + int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return cpu, wait


def process_cpu(pids) -> float:
    """CPU seconds (user + system, all threads) of the processes `pids` so far (Linux /proc; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


async def run_questions(cfg, questions: list[str], concurrency: int, processes: int = 1
                        ) -> tuple[float, float, int, dict]:
    """(wall seconds, CPU seconds of the client: this process and its synth workers, accepted, {"client"|"server":
    run-queue wait seconds}) for `questions` with `concurrency` in flight. With processes > 1 the questions go
    through synth's ProcessPool (workflow.processes), whose workers are started and warmed before the clock."""
    from synth.funnel import Synthesizer
    from synth.pool import ProcessPool
    if processes > 1:
        synth = await ProcessPool(cfg, processes).start()
        await asyncio.gather(*(synth.synthesize(q, f"w{i}") for i, q in enumerate(questions)))   # warm each worker
    else:
        synth = Synthesizer.from_config(cfg)
    gate = asyncio.Semaphore(concurrency)

    async def one(i, q):
        async with gate:
            return await synth.synthesize(q, f"b{i}")

    workers = getattr(synth, "pids", [])
    client0, server0 = schedstat([os.getpid(), *workers]), schedstat(SERVER_PIDS)
    cpu, wall = time.process_time() + process_cpu(workers), time.perf_counter()
    outcomes = await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    wall, cpu = time.perf_counter() - wall, time.process_time() + process_cpu(workers) - cpu
    client1, server1 = schedstat([os.getpid(), *workers]), schedstat(SERVER_PIDS)
    waits = {"client": round(client1[1] - client0[1], 3), "server": round(server1[1] - server0[1], 3),
             "server_cpu": round(server1[0] - server0[0], 3)}
    await synth.aclose()
    bad = [o.rejections for o in outcomes if o.record is None]
    if bad:
        raise RuntimeError(f"{len(bad)} questions rejected, e.g. {bad[0][:3]}")
    return wall, cpu, len(outcomes), waits


def profile_by_package(cfg, questions: list[str]) -> tuple[float, dict[str, float]]:
    """(own-code CPU ms per trajectory, {package: ms per trajectory}) from cProfile self times."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    run_loop(run_questions(cfg, questions, len(questions)))
    profiler.disable()
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, self_time, _, _) in pstats.Stats(profiler).stats.items():
        path = pathlib.Path(filename)
        if str(path).startswith(str(CODE)) and path.parts[len(CODE.parts)] in ("synth", "oresearcher"):
            key = "own:" + path.parts[len(CODE.parts)]
        elif "site-packages" in path.parts:
            key = path.parts[path.parts.index("site-packages") + 1]
        else:
            key = "stdlib/builtin"
        by_package[key] = by_package.get(key, 0.0) + self_time
    n = len(questions)
    ranked = {k: round(1000 * v / n, 1) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]}
    own = 1000 * sum(v for k, v in by_package.items() if k.startswith("own:")) / n
    return own, ranked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is reported")
    ap.add_argument("--server-processes", type=int, default=1,
                    help="processes of the scripted LLM server (its CPU is reported as server_cpu; "
                    "1 is not a bottleneck)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="synth worker processes for the throughput runs (workflow.processes; default: one per CPU)")
    ap.add_argument("--section", default="", help="write the figures under this key of an existing --out file "
                                                  "(e.g. idle_16_core_host) instead of replacing it")
    ap.add_argument("--cache-dir", default="/tmp/oresearcher-bench-cache")
    ap.add_argument("--out", default=str(REPO / "experiments/bench/results/synth_throughput.json"))
    ap.add_argument("--code", default=str(REPO),
                    help="checkout whose synth/ and oresearcher/ are measured, e.g. an earlier commit's worktree "
                         "(default: this one): the same benchmark then measures both sides of a change")
    args = ap.parse_args()
    global CODE
    CODE = pathlib.Path(args.code).resolve()
    sys.path.insert(0, str(CODE))
    os.chdir(CODE)   # configs/synth.py is read relative to the checkout

    base_url, servers = start_servers(args.latency, args.server_processes)
    SERVER_PIDS[:] = [p.pid for p in servers]
    topics = ["volcanoes", "photosynthesis", "the Roman Empire", "jazz", "the printing press", "the Black Death",
              "the Inca Empire", "plate tectonics", "honey bees", "the steam engine", "coral reefs", "black holes"]
    questions = [f"How did {topics[i % len(topics)]} shape history (case {i})?" for i in range(args.questions)]
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        cfg = synth_config(base_url, args.cache_dir)
        seq_cfg = synth_config(base_url, args.cache_dir, **{"workflow.mode": "sequential"})
        run_loop(run_questions(cfg, questions, args.questions))    # warm-up: index and tool caches for every question
        ones, manys, pars, seqs = [], [], [], []
        for _ in range(args.repeats):   # interleaved, so a burst of load on the shared machine hits both sides
            ones.append(run_loop(run_questions(cfg, questions[:1], 1, args.processes)))
            manys.append(run_loop(run_questions(cfg, questions, args.questions, args.processes)))
            pars.append(run_loop(run_questions(cfg, questions[1:2], 1))[0])
            seqs.append(run_loop(run_questions(seq_cfg, questions[1:2], 1))[0])
        own_profiled_ms, by_package = profile_by_package(cfg, questions)
    finally:
        for process in servers:
            process.terminate()
    one_wall, one_cpu, _, one_waits = sorted(ones, key=lambda r: r[0])[len(ones) // 2]
    many_wall, many_cpu, n, many_waits = sorted(manys, key=lambda r: r[0])[len(manys) // 2]
    par_wall, seq_wall = statistics.median(pars), statistics.median(seqs)
    cpu_ms = 1000 * many_cpu / n
    profiled_total = sum(by_package.values())
    result = {
        "latency_s_per_llm_call": args.latency,
        "repeats": args.repeats, "statistic": "median",
        "one_question_wall_s": round(one_wall, 3),
        f"{args.questions}_questions_wall_s": round(many_wall, 3),
        "throughput_x": round((n / many_wall) / (1 / one_wall), 2), "throughput_target_x": 55,
        "throughput_x_each_repeat": [round(len(questions) * o[0] / m[0], 2) for o, m in zip(ones, manys)],
        "runqueue_wait_s": {"one_question": one_waits, f"{args.questions}_questions": many_waits,
                            "meaning": "client/server: time runnable but waiting for a CPU taken by other work; "
                                       "server_cpu: CPU seconds of the scripted server processes (Linux schedstat)"},
        "server_processes": args.server_processes,
        "synth_processes": args.processes,
        "parallel_wall_s": round(par_wall, 3), "sequential_wall_s": round(seq_wall, 3),
        "parallel_vs_sequential": round(par_wall / seq_wall, 3), "parallel_vs_sequential_target": 0.35,
        "cpu_ms_per_trajectory": round(cpu_ms, 1),
        "cpu_ms_one_question": round(1000 * one_cpu, 1),
        "own_code_cpu_ms_per_trajectory": round(cpu_ms * own_profiled_ms / profiled_total, 1),
        "own_code_cpu_ms_per_trajectory_profiled": round(own_profiled_ms, 1),
        "cpu_by_package_ms_per_trajectory (profiled, inflated by cProfile)": by_package,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "started_utc": started,
                    "python": platform.python_version(), "event_loop": loop_name(),
                    "note": "shared machine: other work was running, so wall times and throughput are pessimistic"},
        "notes": "openai teacher vs a scripted server in a separate process; local tools (cached) and heuristic "
                 "judge; 1 candidate per question, 4 sub-questions, 5 LLM calls per researcher. "
                 "own_code_cpu_ms_per_trajectory = cpu_ms_per_trajectory x the share of cProfile self time spent "
                 "in synth/ and oresearcher/ functions (waits excluded: a waiting task uses no CPU)",
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.section:   # keep the file's other figures, put these under one key
        existing = json.loads(out.read_text()) if out.is_file() else {}
        result = {**existing, args.section: result}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The embedded offline evaluation: one table, teacher vs SmolLM2 base / after SFT / after RL, on CPU.

    python -m experiments.eval.embedded [--sft DIR] [--rl DIR] [--limit N] [--synth-url URL]

Every system answers the 30 questions of experiments/data/embedded_eval.jsonl with the tools of the embedded
synthesizer (local BM25 search and local Wikipedia pages), and every report is scored the same way:
  * judge      synth's heuristic judge (POST /v1/judge; a documented, deterministic stand-in for the LLM judge):
               overall and its four dimensions, 0-100. A question the system left without a final report scores
               0 (its failure); a judge abstention on a real report is counted and left out of the mean;
  * KPR / KPC  the lexical key-point judge (experiments/eval/kpr.py) against the set's gold key points, 0-100;
  * R_format, R_tool and tool calls per question, from `oresearcher.protocol`.
Systems:
  * teacher    synth's workflow with the extractive teacher (no LLM), in process, one candidate per question;
  * base       the embedded SmolLM2-135M-Instruct GGUF;
  * sft, rl    HF-layout checkpoint directories (`save_hf` exports) given with --sft / --rl.
The policies run the RL rollout loop itself (`oresearcher.rl.rollout`, greedy, one episode per question, all
questions in one sampler batch) against the same synth service, with a CPU budget: at most --max-turns tool
calls, --turn-tokens tokens per turn, --max-tokens tokens per episode. A row that cannot run says why.
The tool and judge endpoints are served in process (`InProcessTools`: synth's Tools and HeuristicJudge, a cache
under --workdir) unless --synth-url names a running synth service.
Results: the table on stdout and experiments/eval/results/embedded.json (rendered into RESULTS.md); each
system's rows {id, prompt, article, trajectory} in --workdir/<system>.jsonl.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from experiments.eval.kpr import LexicalKeyPoints, kpr_report
from oresearcher import protocol

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE.parent / "data" / "embedded_eval.jsonl"
RESULTS = HERE / "results" / "embedded.json"
DIMENSIONS = ("comprehensiveness", "insight", "instruction_following", "readability")


# ------------------------------------------------------------------------------------------ synth service
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessTools:
    """The synth tool and judge endpoints (DESIGN contract 7: /v1/tools/*, /v1/judge, /healthz) served from this
    process over synth's own `Tools` and `HeuristicJudge` (the code behind `python -m synth serve`), so the
    rollouts' HTTP tool calls and the judging need no second process; --synth-url uses a running service."""

    def __init__(self, cache_dir: Path):
        import threading

        import uvicorn
        from fastapi import FastAPI
        from synth.judge import HeuristicJudge
        from synth.tools import Tools

        app = FastAPI()
        holder: dict = {}

        def tools():   # built inside the server's event loop: the tools' clients belong to it
            if "tools" not in holder:
                holder["tools"] = Tools.from_config({"cache_dir": str(cache_dir), "search": {"backend": "local"},
                                                     "crawl": {"backend": "local"}})
                holder["judge"] = HeuristicJudge(holder["tools"])
            return holder["tools"]

        @app.get("/healthz")
        async def healthz():
            return {"ok": True}

        @app.post("/v1/tools/web_search")
        async def web_search(body: dict):
            return (await tools().web_search(list(body.get("queries", [])), int(body.get("num", 10)))).to_json()

        @app.post("/v1/tools/crawl_page")
        async def crawl_page(body: dict):
            return (await tools().crawl_page(list(body.get("urls", [])), str(body.get("goal", "")))).to_json()

        @app.post("/v1/judge")
        async def judge(body: dict):
            tools()
            result = await holder["judge"].score(body["question"], body.get("report", ""),
                                                 trajectory=body.get("trajectory"))
            return result.to_json()

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process tool service did not start")
            time.sleep(0.05)

    def terminate(self):
        self._server.should_exit = True

    def wait(self, timeout=None):
        self._thread.join(timeout)


# ------------------------------------------------------------------------------------------------ systems
def teacher_texts(questions: list[dict], *, synth_config: str | None, cache_dir: Path, mode: str = "parallel",
                  step_budget: int = 10, concurrency: int = 8) -> dict[str, str]:
    """id -> trajectory text written by synth's workflow (planner -> researchers -> summarizer -> merge) with
    the configured teacher (embedded: the extractive teacher), one candidate per question: the same single try
    a policy gets (the quality funnel's best-of-3 selection is a data-making step, not a system).
    A question whose workflow fails (TeacherError) gets no trajectory: an empty report, scored as such."""
    from experiments.run_agent import load_synth_config
    from synth.teachers import TeacherError, make_teacher
    from synth.tools import Tools
    from synth.workflow import Workflow

    cfg = load_synth_config(synth_config, str(cache_dir))

    async def run_all():
        tools = Tools.from_config(cfg)
        workflow = Workflow(make_teacher(cfg, tools), tools, step_budget=step_budget, mode=mode)
        gate = asyncio.Semaphore(concurrency)

        async def one(q):
            async with gate:
                try:
                    return q["id"], (await workflow.run(q["prompt"])).text
                except TeacherError:
                    return q["id"], None
        try:
            return {qid: text for qid, text in await asyncio.gather(*(one(q) for q in questions)) if text}
        finally:
            await tools.aclose()

    return asyncio.run(run_all())


def policy_texts(checkpoint: str | None, questions: list[dict], url: str, args) -> dict[str, str]:
    """id -> response text of one greedy rollout per question (checkpoint None = the embedded GGUF)."""
    from oresearcher import serve
    from oresearcher.rl.rollout import RolloutConfig, rollout
    from oresearcher.sampler import Sampler

    model, tokenizer, _ = serve.load(checkpoint)
    cfg = RolloutConfig(group_size=1, max_turns=args.max_turns, max_tokens=args.max_tokens,
                        max_turn_tokens=args.turn_tokens, temperature=0.0,
                        max_observation_tokens=args.observation_tokens)
    episodes, _ = rollout(Sampler(model, tokenizer), tokenizer, [q["prompt"] for q in questions], url, cfg)
    return {q["id"]: ep.response for q, ep in zip(questions, episodes)}


# ------------------------------------------------------------------------------------------------ scoring
async def judge_all(url: str, questions: list[dict], texts: dict[str, str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(q):
            text = texts.get(q["id"], "")
            report = protocol.extract_report(text) or ""
            if not report.strip():   # the system's failure, not the judge's: it scores 0, it is not dropped
                return {"abstained": False, "overall": 0.0, "scores": {d: 0.0 for d in DIMENSIONS},
                        "judge": "no report"}
            resp = await client.post(f"{url}/v1/judge", json={"question": q["prompt"], "report": report,
                                                               "trajectory": text})
            if resp.status_code != 200:
                return {"abstained": True, "reason": f"HTTP {resp.status_code}"}
            return resp.json()
        return await asyncio.gather(*(one(q) for q in questions))


def score_system(url: str, questions: list[dict], texts: dict[str, str]) -> dict:
    """Means over the questions (0-100 for judge and KPR/KPC); abstentions counted and left out of the mean."""
    verdicts = asyncio.run(judge_all(url, questions, texts))
    lexical = LexicalKeyPoints()
    per_q = []
    for q, verdict in zip(questions, verdicts):
        text = texts.get(q["id"], "")
        report = protocol.extract_report(text) or ""
        kp = asyncio.run(kpr_report(report, [k["text"] for k in q["key_points"]], lexical))
        calls = protocol.count_tool_calls(text)
        per_q.append({"id": q["id"], "judge": verdict, "kpr": kp["kpr"], "kpc": kp["kpc"],
                      "r_format": protocol.format_reward(text), "r_tool": protocol.tool_reward(text),
                      "tool_calls": sum(calls.values()), "has_report": bool(report.strip())})
    n = len(per_q)
    judged = [r["judge"] for r in per_q if not r["judge"].get("abstained")]
    row = {"questions": n, "reports": sum(r["has_report"] for r in per_q),
           "judge_abstained": n - len(judged),
           "judge": 100 * sum(j["overall"] for j in judged) / len(judged) if judged else None}
    for dim in DIMENSIONS:
        row[dim] = 100 * sum(j["scores"][dim] for j in judged) / len(judged) if judged else None
    row["kpr"] = 100 * sum(r["kpr"] for r in per_q) / n
    row["kpc"] = 100 * sum(r["kpc"] for r in per_q) / n
    row["r_format"] = sum(r["r_format"] for r in per_q) / n
    row["r_tool"] = sum(r["r_tool"] for r in per_q) / n
    row["tool_calls"] = sum(r["tool_calls"] for r in per_q) / n
    return {"row": row, "per_question": per_q}


# -------------------------------------------------------------------------------------------------- table
COLUMNS = (("system", "{}"), ("judge", "{:.1f}"), ("comprehensiveness", "{:.1f}"), ("insight", "{:.1f}"),
           ("instruction_following", "{:.1f}"), ("readability", "{:.1f}"), ("kpr", "{:.1f}"), ("kpc", "{:.1f}"),
           ("r_format", "{:.2f}"), ("r_tool", "{:.2f}"), ("tool_calls", "{:.1f}"), ("reports", "{}"),
           ("seconds", "{:.0f}"))
HEAD = {"comprehensiveness": "compr", "instruction_following": "instr", "readability": "read",
        "judge": "judge*", "tool_calls": "calls/q"}


def fmt(value, spec: str = "{:.1f}") -> str:
    return "n/a" if value is None else spec.format(value)


def format_table(rows: list[dict]) -> str:
    cells = [[HEAD.get(c, c) for c, _ in COLUMNS]]
    for r in rows:
        if r.get("status", "ok") != "ok":
            cells.append([r["system"], f"could not run: {r['status']}"])
            continue
        cells.append([fmt(r.get(c), spec) for c, spec in COLUMNS])
    widths = [max(len(row[i]) for row in cells if len(row) == len(COLUMNS)) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        if len(row) != len(COLUMNS):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=Path, default=QUESTIONS)
    ap.add_argument("--sft", help="HF-layout checkpoint dir of the SmolLM2 after SFT")
    ap.add_argument("--rl", help="HF-layout checkpoint dir of the SmolLM2 after RL")
    ap.add_argument("--systems", default="teacher,base,sft,rl")
    ap.add_argument("--limit", type=int, help="only the first N questions")
    ap.add_argument("--synth-url", help="a running synth service (default: tools and judge served in process)")
    ap.add_argument("--synth-config", default="configs/synth.py:embedded", help="teacher config file[:preset]")
    ap.add_argument("--workdir", type=Path, help="service log and tool cache (default: a temporary dir)")
    # CPU budget: the KV cache is [30 rows, max-tokens] and is read at every decode step, so max-tokens sets the
    # decode cost; a ~420-token prompt + 3 turns x (256 generated + 256 observation) fits in 2048.
    ap.add_argument("--max-turns", type=int, default=3, help="tool calls per policy episode")
    ap.add_argument("--turn-tokens", type=int, default=256, help="tokens generated per policy turn")
    ap.add_argument("--max-tokens", type=int, default=2048, help="prompt + response tokens per policy episode")
    ap.add_argument("--observation-tokens", type=int, default=256, help="observations are cut to this many tokens")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    # The policies run on CPU here (an installed TPU/GPU plugin would otherwise be probed first).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    questions = [json.loads(line) for line in args.questions.read_text(encoding="utf-8").splitlines() if line]
    questions = questions[:args.limit] if args.limit else questions
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="embedded-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = str(Path(args.synth_config.split(":")[0]).resolve()) + (
        ":" + args.synth_config.split(":", 1)[1] if ":" in args.synth_config else "")
    t_start = time.perf_counter()
    proc = None
    url = args.synth_url
    if url is None:   # the tool and judge endpoints, served in process by synth's own code
        proc = InProcessTools(workdir / "cache")
        url = proc.url
    rows, details = [], {}
    try:
        for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
            t0 = time.perf_counter()
            try:
                if system == "teacher":
                    texts = teacher_texts(questions, synth_config=config, cache_dir=workdir / "cache")
                elif system == "base":
                    texts = policy_texts(None, questions, url, args)
                elif system in ("sft", "rl"):
                    checkpoint = getattr(args, system)
                    if not checkpoint:
                        rows.append({"system": system, "status": f"no checkpoint given (--{system} DIR)"})
                        continue
                    texts = policy_texts(checkpoint, questions, url, args)
                else:
                    raise ValueError(f"unknown system {system!r}: choose from teacher, base, sft, rl")
                scored = score_system(url, questions, texts)
            except (Exception, SystemExit) as err:   # one broken row must not hide the others
                rows.append({"system": system, "status": f"{type(err).__name__}: {err}"[:300]})
                continue
            with open(workdir / f"{system}.jsonl", "w", encoding="utf-8") as f:
                for q in questions:
                    text = texts.get(q["id"], "")
                    f.write(json.dumps({"id": q["id"], "prompt": q["prompt"],
                                        "article": protocol.extract_report(text) or "", "trajectory": text},
                                       ensure_ascii=False) + "\n")
            rows.append({"system": system, "status": "ok", **scored["row"], "seconds": time.perf_counter() - t0})
            details[system] = scored["per_question"]
            print(f"[{system}] done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    total = time.perf_counter() - t_start
    table = format_table(rows)
    print(f"Embedded evaluation: {len(questions)} questions, CPU, {total:.0f}s total. *judge = synth heuristic "
          f"judge (offline stand-in for the LLM judge); KPR/KPC = lexical key-point judge; 0-100.")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "title": "Embedded offline evaluation (30 questions, CPU)",
        "description": "Heuristic judge (offline stand-in for the LLM judge) and lexical KPR/KPC, 0-100; "
                       "R_format and R_tool from the protocol module.",
        "command": "python -m experiments.eval.embedded " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": [{k: r.get(k) for k in ["system", "status"] + [c for c, _ in COLUMNS[1:]]} for r in rows],
        "summary": {"questions": len(questions), "seconds_total": round(total, 1)},
        "per_question": details}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

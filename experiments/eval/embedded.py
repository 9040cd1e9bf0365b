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
  * sft, rl    the policies of `python -m oresearcher.train --config=configs/rl.py` (default for --sft and --rl:
               that run's workdir, /tmp/oresearcher/rl): SmolLM2 after SFT is the warm start's export
               (WORKDIR/warm_start/policy); after RL is the run's export (its config's export_dir, when set) or
               else the parameters of its latest checkpoint (WORKDIR/checkpoints) over its starting model.
               --sft / --rl may also name an HF-layout directory (a `save_hf` export) or an SFT workdir (its
               export_dir). A policy that is not there gives the row "not available: run ...".
The policies run the RL rollout loop itself (`oresearcher.rl.rollout`, greedy, one episode per question, all
questions in one sampler batch) against the same synth service, with a CPU budget: at most --max-turns tool
calls, --turn-tokens tokens per turn, --max-tokens tokens per episode. Two things keep three 135M policies
within ~10 minutes on 2 CPU cores: the prompt prefix every question shares (system prompt and chat template)
is prefilled once per policy (the sampler's shared prefix), and the three policies, which share architecture and
shapes, compile prefill and decode once through a compilation cache under --workdir. A row that cannot run
says why. Measured on an idle 2-core machine after the README main job: 8:22 wall (teacher 8 s, base 177 s,
sft 142 s, rl 169 s), 7.3 GB peak RSS.
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
import sys
import tempfile
import time
from pathlib import Path

from experiments.eval.kpr import LexicalKeyPoints, kpr_report
from oresearcher import paths, protocol, synth_client

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE.parent / "data" / "embedded_eval.jsonl"
RESULTS = HERE / "results" / "embedded.json"
DIMENSIONS = ("comprehensiveness", "insight", "instruction_following", "readability")


# ------------------------------------------------------------------------------------------ synth service
class InProcessTools:
    """The synth tool and judge endpoints (DESIGN contract 7: /v1/tools/*, /v1/judge, /healthz) served from this
    process over synth's own `Tools` and `HeuristicJudge` (the code behind `python -m synth serve`), so the
    rollouts' HTTP tool calls and the judging need no second process; --synth-url uses a running service."""

    def __init__(self, cache_dir: Path):
        from fastapi import FastAPI

        from experiments.loopback import LocalServer
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

        self._server = LocalServer(app).start()
        self.url = self._server.url

    def terminate(self):
        self._server.stop()

    def wait(self, timeout=None):
        pass        # terminate() waited


# ------------------------------------------------------------------------------------------------ systems
def teacher_texts(questions: list[dict], *, synth_config: str | None, cache_dir: Path, mode: str = "parallel",
                  step_budget: int = 10, concurrency: int = 8) -> dict[str, str]:
    """id -> trajectory text written by synth's workflow (planner -> researchers -> summarizer -> merge) with
    the configured teacher (embedded: the extractive teacher), one candidate per question: the same single try
    a policy gets (the quality funnel's best-of-3 selection is a data-making step, not a system).
    A question whose workflow fails (TeacherError) gets no trajectory: an empty report, scored as such."""
    from experiments.run_agent import load_synth_config
    from synth.funnel import Rules
    from synth.teachers import TeacherError, make_teacher
    from synth.tools import Tools
    from synth.workflow import Workflow

    cfg = load_synth_config(synth_config, str(cache_dir))

    async def run_all():
        tools = Tools.from_config(cfg)
        band = Rules.of(cfg.workflow).band if "workflow" in cfg else None   # the funnel's rules: the reward's band
        workflow = Workflow(make_teacher(cfg, tools), tools, step_budget=step_budget, mode=mode,
                            tool_high=band[1] if band else None)
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


# ----------------------------------------------------------------------------------------------- policies
REPO = HERE.parents[1]
TRAIN_COMMAND = "python -m oresearcher.train --config=configs/rl.py"


class PolicyMissing(Exception):
    """The policy of a row is not on disk; the message says which command writes it."""


def default_rl_workdir() -> Path:
    """The workdir of `python -m oresearcher.train --config=configs/rl.py` (configs/rl.py's default preset)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))      # configs/rl.py imports `configs.common`
    from synth.config import load_config
    return Path(load_config(str(REPO / "configs" / "rl.py")).workdir)


def is_hf_export(path: Path) -> bool:
    """An HF-layout directory written by `save_hf`: config.json next to safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _run_config(path: Path) -> dict | None:
    """The config.json that `python -m oresearcher.train` writes into a workdir (None if `path` is not one)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and "stage" in cfg else None


def find_policy(system: str, given: str | None) -> tuple[str, Path]:
    """("hf", dir) or ("rl_checkpoint", workdir) for the sft / rl row; raises PolicyMissing naming the fix.

    `given` is --sft / --rl: an HF export, an SFT workdir (its export_dir), or an RL workdir; None = the RL
    workdir of configs/rl.py's default preset."""
    workdir = Path(given) if given else default_rl_workdir()
    hint = f"run `{TRAIN_COMMAND}`" if not given else f"point --{system} at an HF export or a training workdir"
    if is_hf_export(workdir):
        return "hf", workdir
    cfg = _run_config(workdir) or {}
    export = Path(paths.under(workdir, cfg["export_dir"])) if cfg.get("export_dir") else None
    if system == "sft":
        for candidate in (workdir / "warm_start" / "policy", export):
            if candidate is not None and is_hf_export(candidate):
                return "hf", candidate
        raise PolicyMissing(f"not available: {hint} (no SFT export: {workdir / 'warm_start' / 'policy'} is "
                            f"missing)")
    if cfg.get("stage") == "rl":
        if export is not None and is_hf_export(export):
            return "hf", export
        steps = [int(d.name) for d in (workdir / "checkpoints").glob("*") if d.name.isdigit()]
        if steps:
            return "rl_checkpoint", workdir
    raise PolicyMissing(f"not available: {hint} (no RL export and no checkpoint in {workdir})")


def load_policy(kind: str, path: Path):
    """(model, tokenizer) of a policy found by `find_policy`. An RL checkpoint holds the policy's parameters (and
    the optimizer state, not needed here): they replace those of the run's starting model (config.model)."""
    from oresearcher import serve

    if kind == "hf":
        model, tokenizer, _ = serve.load(str(path))
        return model, tokenizer
    import jax
    from flax import nnx
    from ml_collections import ConfigDict

    from oresearcher import sharding
    from oresearcher.checkpoint import Checkpointer
    from oresearcher.sft import build_model

    config = ConfigDict(_run_config(path))
    model, tokenizer = build_model(config, sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]), None)
    ckpt = Checkpointer(path / "checkpoints", keep=1000)
    try:
        step = ckpt.latest_step()
        state, _ = ckpt.restore(step)
    finally:
        ckpt.close()
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, state["params"])
    nnx.update(model, params)
    print(f"[rl] parameters of {path / 'checkpoints'} step {step}", file=sys.stderr, flush=True)
    return model, tokenizer


def policy_texts(policy: tuple[str, Path] | None, questions: list[dict], url: str, args) -> dict[str, str]:
    """id -> response text of one greedy rollout per question (policy None = the embedded GGUF)."""
    from oresearcher import serve
    from oresearcher.engine import Engine
    from oresearcher.rl.rollout import RolloutConfig, rollout

    if policy is None:
        model, tokenizer, _ = serve.load(None)
    else:
        model, tokenizer = load_policy(*policy)
    cfg = RolloutConfig(group_size=1, max_turns=args.max_turns, max_tokens=args.max_tokens,
                        max_turn_tokens=args.turn_tokens, temperature=0.0,
                        max_observation_tokens=args.observation_tokens)
    engine = Engine(model, tokenizer, slots=min(8, len(questions)))
    episodes, timings = rollout(engine, tokenizer, [q["prompt"] for q in questions], url, cfg)
    finishes: dict[str, int] = {}
    for ep in episodes:
        finishes[ep.finish] = finishes.get(ep.finish, 0) + 1
    print(f"  generate {timings['time/generate']:.0f}s, tools {timings['time/tools']:.1f}s; episodes ended by "
          f"{finishes}", file=sys.stderr, flush=True)
    return {q["id"]: ep.response for q, ep in zip(questions, episodes)}


# ------------------------------------------------------------------------------------------------ scoring
async def judge_all(url: str, questions: list[dict], texts: dict[str, str]) -> list[dict]:
    async with synth_client.async_client(timeout=120) as client:   # sends $SYNTH_TOKEN when set
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
            status = r["status"]   # "not available: run ..." (no policy on disk) or the error of a failed row
            cells.append([r["system"], status if status.startswith("not available") else f"could not run: {status}"])
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
    ap.add_argument("--sft", help="SmolLM2 after SFT: an HF export, SFT workdir or RL workdir (its warm start's "
                    "export); default: the workdir of configs/rl.py")
    ap.add_argument("--rl", help="SmolLM2 after RL: an HF export or RL workdir (its export_dir, else its latest "
                    "checkpoint); default: the workdir of configs/rl.py")
    ap.add_argument("--systems", default="teacher,base,sft,rl")
    ap.add_argument("--limit", type=int, help="only the first N questions")
    ap.add_argument("--synth-url", help="a running synth service (default: tools and judge served in process)")
    ap.add_argument("--synth-config", default="configs/synth.py:embedded", help="teacher config file[:preset]")
    ap.add_argument("--workdir", type=Path, help="service log and tool cache (default: a temporary dir)")
    # The policies' budget is the RL preset's episode (configs/rl.py, smollm2): up to 10 tool calls,
    # 384 tokens per turn, 2048 tokens per episode, observations cut to 48 tokens as its rollouts cut them. The
    # common prompt prefix is prefilled once per policy (the sampler's shared prefix).
    ap.add_argument("--max-turns", type=int, default=10, help="tool calls per policy episode")
    ap.add_argument("--turn-tokens", type=int, default=384, help="tokens generated per policy turn")
    ap.add_argument("--max-tokens", type=int, default=2048, help="prompt + response tokens per policy episode")
    ap.add_argument("--observation-tokens", type=int, default=48, help="observations are cut to this many tokens")
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
    load_before = os.getloadavg()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if {"base", "sft", "rl"} & set(systems):
        # The policies share one architecture and one set of shapes: the second and third reuse the first's
        # compiled prefill and decode through a compilation cache local to this run (cold at every run).
        import jax
        saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                     "jax_persistent_cache_min_compile_time_secs")}
        jax.config.update("jax_compilation_cache_dir", str(workdir / "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    else:
        saved = {}
    proc = None
    url = args.synth_url
    if url is None:   # the tool and judge endpoints, served in process by synth's own code
        proc = InProcessTools(workdir / "cache")
        url = proc.url
    rows, details, sources = [], {}, {}
    try:
        for system in systems:
            t0 = time.perf_counter()
            try:
                if system == "teacher":
                    texts = teacher_texts(questions, synth_config=config, cache_dir=workdir / "cache")
                elif system == "base":
                    texts = policy_texts(None, questions, url, args)
                elif system in ("sft", "rl"):
                    try:
                        policy = find_policy(system, getattr(args, system))
                    except PolicyMissing as missing:
                        rows.append({"system": system, "status": str(missing)})
                        continue
                    sources[system] = f"{policy[1]} ({'HF export' if policy[0] == 'hf' else 'latest RL checkpoint'})"
                    print(f"[{system}] policy: {sources[system]}", file=sys.stderr, flush=True)
                    texts = policy_texts(policy, questions, url, args)
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
        if saved:   # leave the caller's JAX configuration as it was (main() may run inside a larger process)
            import jax
            for key, value in saved.items():
                jax.config.update(key, value)
    total = time.perf_counter() - t_start
    table = format_table(rows)
    print(f"Embedded evaluation: {len(questions)} questions, CPU, {total:.0f}s total. *judge = synth heuristic "
          f"judge (offline stand-in for the LLM judge); KPR/KPC = lexical key-point judge; 0-100.")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "title": f"Embedded offline evaluation ({len(questions)} questions, CPU)",
        "description": "Heuristic judge (offline stand-in for the LLM judge) and lexical KPR/KPC, 0-100; "
                       "R_format and R_tool from the protocol module.",
        "command": "python -m experiments.eval.embedded " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": [{k: r.get(k) for k in ["system", "status"] + [c for c, _ in COLUMNS[1:]]} for r in rows],
        "device": f"CPU ({os.cpu_count()} cores), JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')}",
        "summary": {"questions": len(questions), "seconds_total": round(total, 1),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "policies": sources,
                    "rollout": f"greedy, <= {args.max_turns} tool calls, {args.turn_tokens} tokens per turn, "
                               f"{args.max_tokens} tokens per episode, observations cut to "
                               f"{args.observation_tokens} tokens"},
        "per_question": details}, indent=1))
    return 0


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    sys.exit(main())

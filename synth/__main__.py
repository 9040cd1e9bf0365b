"""Command line: `python -m synth serve ...` (the HTTP service) and `python -m synth run ...` (synth-only mode).

    python -m synth serve --config=configs/synth.py[:preset] --host 127.0.0.1 --port 8700 [--config.key=value]
    python -m synth run --config=configs/synth.py[:preset] --seeds=seeds.jsonl --out=DIR [--config.key=value]
    python -m synth questions --n N --out FILE [--source corpus|llm] [--exclude EVAL.jsonl ...]
"""
from __future__ import annotations

import argparse
import logging
import sys

# bm25s imports JAX for top-k when it is installed; the synthesizer never needs it (numpy top-k is used), and
# importing it costs seconds of start-up and probes accelerators. A None entry makes `import jax` fail fast.
sys.modules.setdefault("jax", None)

from synth.config import DEFAULT, load_config

EPILOG = """\
presets (--config=configs/synth.py:PRESET; see that file):
  embedded  default; offline, no keys: extractive teacher, local Wikipedia corpus tools, heuristic judge
  openai    OpenAI-compatible teacher and judge: OPENAI_BASE_URL, OPENAI_API_KEY, TEACHER_MODEL
            (+ SERPER_API_KEY for real web search and page crawling)
  local     the openai teacher at an oresearcher serving endpoint (OPENAI_BASE_URL)

any config key can be overridden: --config.workflow.candidates=1 --config.workflow.mode=sequential
--config.tools.cache_dir=/data/cache ...

examples:
  python -m synth run --seeds=seeds.jsonl --out=out/          # Ctrl-C, then the same command continues
  python -m synth serve --config=configs/synth.py:openai --port 8700
"""

RUN_HELP = """\
Synthesize one research trajectory per seed question. Writes OUT/trajectories.jsonl (accepted records),
OUT/rejected.jsonl (every rejection with its reason) and OUT/summary.json (counts, rejections per reason,
tokens, cost, wall time). One OUT directory is one job: running again continues where it stopped and adds new
seed lines; nothing is synthesized twice. Exit status: 0 done, 1 no usable seed, 2 bad input, 130 interrupted."""

SERVE_HELP = """\
Serve the HTTP API (OpenAPI document at /openapi.json): POST /v1/jobs, GET /v1/jobs/{id},
GET /v1/trajectories?job=ID&after=CURSOR (NDJSON), POST /v1/tools/web_search, POST /v1/tools/crawl_page,
POST /v1/judge, GET /healthz, GET /metrics. Jobs survive restarts (service.store); a bearer token is required
when the environment variable named by service.token_env (SYNTH_TOKEN) is set, and a --host other than a
loopback address is refused without it (unless --insecure)."""


QUESTIONS_HELP = """\
Write N research questions (comparisons, multi-hop, causes and consequences) as seeds for `run` and for RL,
from the embedded corpus or from the teacher LLM, none about an article an evaluation question draws on and none
sharing half its words with one (every experiments/data/*.jsonl, plus --exclude files). See synth/questions.py."""


def write_questions(cfg, args) -> int:
    import asyncio

    from synth import questions as q
    if args.n < 1:
        print(f"error: --n {args.n}: give a positive number of questions", file=sys.stderr)
        return 2
    try:
        exclude = q.evaluation_sets(args.exclude)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.source == "corpus":
        rows = q.corpus_questions(args.n, seed=args.seed, exclude=exclude)
    else:
        from synth.llm import LLMClient
        if not cfg.teacher.endpoints:
            print("error: --source llm needs teacher endpoints: use --config=configs/synth.py:openai or set "
                  "--config.teacher.endpoints", file=sys.stderr)
            return 2

        async def generate():
            llm = LLMClient.from_config(cfg.teacher)
            try:
                return await q.llm_questions(llm, args.n, exclude=exclude, seed=args.seed)
            finally:
                await llm.aclose()
        rows = asyncio.run(generate())
    q.write(rows, args.out)
    print(f"{len(rows)} questions -> {args.out}")
    if len(rows) < args.n:
        print(f"error: only {len(rows)} of {args.n} questions: the source ran out of new subjects outside the "
              "evaluation sets (try --source llm, or a smaller --n)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,serve,questions}")
    config_help = "config file and preset, file.py[:preset] (default: %(default)s, preset embedded)"
    run = sub.add_parser("run", help="synthesize trajectories for a seeds file (resumable)", description=RUN_HELP,
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", default=DEFAULT, help=config_help)
    run.add_argument("--seeds", required=True, metavar="FILE",
                     help='JSONL, one {"id": optional, "question": "..."} object per line')
    run.add_argument("--out", required=True, metavar="DIR",
                     help="output directory, created if missing; the same DIR again continues the job")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    run.add_argument("--array-record", action="store_true", help="also write OUT/trajectories.array_record")
    serve = sub.add_parser("serve", help="run the HTTP service", description=SERVE_HELP, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", default=DEFAULT, help=config_help)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8700, help="port to listen on (default: %(default)s)")
    serve.add_argument("--insecure", action="store_true",
                       help="serve on a non-loopback --host without a token (refused otherwise: set SYNTH_TOKEN)")
    questions = sub.add_parser("questions", help="write research questions (seeds for synthesis and RL)",
                               description=QUESTIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    questions.add_argument("--n", type=int, required=True, help="number of questions")
    questions.add_argument("--out", required=True, metavar="FILE", help="JSONL {id, question, kind, pages}")
    questions.add_argument("--source", choices=("corpus", "llm"), default="corpus",
                           help="the embedded corpus (offline) or the config's teacher LLM (default: %(default)s)")
    questions.add_argument("--exclude", action="append", default=[], metavar="FILE",
                           help="a further evaluation set (JSONL with prompt or question) to keep questions out of")
    questions.add_argument("--seed", type=int, default=0)
    questions.add_argument("--config", default=DEFAULT, help=config_help)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unknown argument {item!r}; config overrides look like --config.workflow.candidates=1")
        overrides.append(item[len("--config."):])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "questions":
        return write_questions(cfg, args)
    if args.command == "serve":
        from synth.service import bind_refusal
        from synth.service import serve as serve_app
        refusal = bind_refusal(cfg, args.host, args.insecure)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        try:
            serve_app(cfg, args.host, args.port)
        except (ValueError, KeyError, FileNotFoundError) as error:
            print(f"error: --config: {error}", file=sys.stderr)
            return 2
        return 0
    from synth.cli import run_seeds
    return run_seeds(cfg, args.seeds, args.out, progress=not args.no_progress, array_record=args.array_record)


if __name__ == "__main__":
    sys.exit(main())

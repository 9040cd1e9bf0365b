"""Command line: `python -m synth serve ...` (the HTTP service) and `python -m synth run ...` (synth-only mode).

    python -m synth serve --config=configs/synth.py[:preset] --host 127.0.0.1 --port 8700 [--config.key=value]
    python -m synth run --config=configs/synth.py[:preset] --seeds=seeds.jsonl --out=DIR [--config.key=value]
"""
from __future__ import annotations

import argparse
import logging
import sys

# bm25s imports JAX for top-k when it is installed; the synthesizer never needs it (numpy top-k is used), and
# importing it costs seconds of start-up and probes accelerators. A None entry makes `import jax` fail fast.
sys.modules.setdefault("jax", None)

from synth.config import DEFAULT, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", default=DEFAULT)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700)
    run = sub.add_parser("run", help="synthesize trajectories for a seeds file (resumable)")
    run.add_argument("--config", default=DEFAULT)
    run.add_argument("--seeds", required=True, help="JSONL, one {\"id\"?, \"question\"} per line")
    run.add_argument("--out", required=True, help="output directory (re-running continues where it stopped)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--array-record", action="store_true", help="also write trajectories.array_record")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unknown argument {item!r}; overrides look like --config.workflow.candidates=1")
        overrides.append(item[len("--config."):])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from synth.service import serve as serve_app
        serve_app(cfg, args.host, args.port)
        return 0
    from synth.cli import run_seeds
    return run_seeds(cfg, args.seeds, args.out, progress=not args.no_progress, array_record=args.array_record)


if __name__ == "__main__":
    sys.exit(main())

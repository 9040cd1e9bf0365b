"""`python -m experiments.view PATH... [--port 8750] [--host 127.0.0.1]` (see experiments/view/__init__.py)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.view",
        description="Serve a browser view of trajectories: synth outputs, RL workdirs, run_agent outputs.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a synth output dir, an RL workdir, a run_agent output dir or a JSONL file of traces")
    parser.add_argument("--port", type=int, default=8750)
    parser.add_argument("--host", default="127.0.0.1",
                        help="127.0.0.1 (default) serves this machine only; 0.0.0.0 serves the network")
    args = parser.parse_args(argv)

    from experiments.view.sources import Catalog
    try:
        catalog = Catalog(args.paths)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from experiments.view.app import create_app

    for source in catalog.sources:
        print(f"view: {source.name}: {source.path}", file=sys.stderr)
    print(f"view: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(catalog), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())

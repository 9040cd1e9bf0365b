"""Look at trajectory data the way the trainer will see it.

    python -m oresearcher.data inspect FILE --tokenizer DIR [--index N] [--max-len L] [--layout released]
    python -m oresearcher.data import SRC.jsonl OUT.jsonl         # released O-Researcher SFT layout -> contract 2

`inspect` prints the record counts (bad ones by reason), token counts, the share of tokens trained on, and
one record rendered with its masked (not trained) spans marked ⟦like this⟧. FILE may be a JSONL or ArrayRecord
file or a synth stream URL. DIR is an HF tokenizer directory, or "gguf:embedded" for SmolLM2's tokenizer.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from oresearcher.data.masks import assistant_mask, render_chat
from oresearcher.data.pipeline import load_examples
from oresearcher.data.records import BadRecord, RecordStats, read_records


def load_tokenizer(spec: str):
    if spec.startswith("gguf:"):
        from oresearcher.model.gguf_io import load_gguf
        path = spec[len("gguf:"):]
        return load_gguf(None if path in ("", "embedded") else path)[1]
    from oresearcher.model.tokenizer import Tokenizer
    return Tokenizer.from_dir(spec)


def marked(text: str, ids, offsets, mask, tokenizer, keep: int) -> str:
    """The rendered chat with runs of masked tokens wrapped in ⟦ ⟧; runs longer than 2*keep characters are
    shortened in the middle."""
    out, run_start, pos = [], None, 0
    for (s, _), m in zip(list(offsets) + [(len(text), len(text))], list(mask) + [True]):
        if not m and run_start is None:
            out.append(text[pos:s])
            run_start = s
        elif m and run_start is not None:
            span = text[run_start:s]
            if len(span) > 2 * keep:
                span = f"{span[:keep]} …[{len(span) - 2 * keep} chars]… {span[-keep:]}"
            out.append(f"⟦{span}⟧")
            run_start, pos = None, s
    out.append(text[pos:])
    return "".join(out)


def inspect(args) -> int:
    tokenizer = load_tokenizer(args.tokenizer)
    try:
        examples, stats = load_examples(args.file, tokenizer, args.max_len, args.on_bad_record, args.layout,
                                         args.check_tags)
    except BadRecord as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: {stats.summary()}")
    for name, example in sorted(stats.examples.items()):
        print(f"  first {name}: {example}")
    if not examples:
        return 1
    lengths = np.array([len(e) for e in examples])
    trained = np.array([int(e.loss_mask.sum()) for e in examples])
    print(f"tokens per record: min {lengths.min()}, mean {lengths.mean():.0f}, max {lengths.max()}, "
          f"total {lengths.sum()}")
    print(f"trained (assistant-authored) tokens: {trained.sum()} = {trained.sum() / lengths.sum():.1%} of all; "
          f"per record min {np.min(trained / lengths):.1%}, max {np.max(trained / lengths):.1%}")

    records = list(read_records(args.file, "skip", stats=RecordStats(), layout=args.layout,
                                check_tags=args.check_tags))
    record = records[min(args.index, len(records) - 1)]
    text, spans = render_chat(record["messages"], tokenizer)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = assistant_mask(offsets, spans)
    print(f"\nrecord {record.get('id', '?')} ({record['_where']}): {len(ids)} tokens, {int(mask.sum())} trained, "
          f"{len(ids) - int(mask.sum())} masked; masked spans marked ⟦ ⟧:\n")
    print(marked(text, ids, offsets, mask, tokenizer, args.keep))
    return 0


def import_cmd(args) -> int:
    stats = RecordStats()
    n = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for record in read_records(args.src, args.on_bad_record, stats=stats, layout="released"):
            record.pop("_where", None)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    print(f"{args.src} -> {args.out}: {stats.summary()}")
    return 0 if n else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oresearcher.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="token counts, mask coverage and masked spans")
    p.add_argument("file")
    p.add_argument("--tokenizer", required=True, help="HF tokenizer directory, or gguf:embedded")
    p.add_argument("--index", type=int, default=0, help="which record to show")
    p.add_argument("--max-len", type=int, default=65536)
    p.add_argument("--layout", choices=("trajectory", "released"), default="trajectory")
    p.add_argument("--on-bad-record", choices=("skip", "stop"), default="skip")
    p.add_argument("--no-check-tags", dest="check_tags", action="store_false",
                   help="accept unclosed/unopened tags (e.g. to look at the released model's raw traces)")
    p.add_argument("--keep", type=int, default=120, help="characters shown at each end of a long masked span")
    p.set_defaults(run=inspect)
    p = sub.add_parser("import", help="released O-Researcher SFT layout -> trajectory records (JSONL)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--on-bad-record", choices=("skip", "stop"), default="skip")
    p.set_defaults(run=import_cmd)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Trajectory data for SFT and RL: records, loss masks, packing and the grain pipeline (DESIGN contracts 2-3).

    from oresearcher.data import read_records, tokenize_record, load_examples, train_batches
    python -m oresearcher.data inspect FILE --tokenizer DIR      # token counts, mask coverage, masked spans

Importing this package does not import JAX.
"""
from oresearcher.data.importer import import_released
from oresearcher.data.masks import Example, assistant_mask, render_chat, tokenize_record
from oresearcher.data.packing import collate, collate_row, pack_rows
from oresearcher.data.pipeline import PackedRows, eval_batches, load_examples, split_examples, train_batches
from oresearcher.data.records import BadRecord, RecordStats, check_record, read_records, write_array_record

__all__ = ["BadRecord", "Example", "PackedRows", "RecordStats", "assistant_mask", "check_record", "collate",
           "collate_row", "eval_batches", "import_released", "load_examples", "pack_rows", "read_records",
           "render_chat", "split_examples", "tokenize_record", "train_batches", "write_array_record"]

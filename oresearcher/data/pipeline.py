"""The SFT input pipeline: records -> examples -> packed rows -> batches, as a grain dataset whose iterator
state is a checkpointable dict (the trainer saves it; restoring it reproduces the data order exactly).

    examples, stats = load_examples(["trajectories.jsonl"], tokenizer, max_len=4096, on_bad_record="skip")
    train, held_out = split_examples(examples, eval_fraction=0.05)
    it = iter(train_batches(train, seq_len=4096, batch_size=8, seed=0))
    batch = next(it)                       # {"input_ids","targets","loss_mask","positions","segment_ids"}: [B, T]
    state = it.get_state()                 # JSON-able dict, saved with the checkpoint
    it.set_state(state)                    # continue with exactly the batch that followed

Epoch e visits the examples in a permutation drawn from (seed, e) and packs them first-fit; rows are computed
from lengths only, so the whole schedule is a pure function of (lengths, seq_len, seed) and an index into it
is the entire iterator state. Each process of a multi-host run takes every process_count-th row.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

import numpy as np

from oresearcher.data.masks import Example, tokenize_record
from oresearcher.data.packing import collate, collate_row, pack_rows
from oresearcher.data.records import BadRecord, RecordStats, read_records


def load_examples(sources: Sequence[str] | str, tokenizer, max_len: int, on_bad_record: str = "skip",
                  layout: str = "trajectory", check_tags: bool = True) -> tuple[list[Example], RecordStats]:
    """Read and tokenise every record of `sources` (files or stream URLs). Bad records (broken JSON, no
    messages, unclosed tags, more than max_len tokens) are skipped or stop the run per on_bad_record; the
    returned stats count them by reason."""
    stats = RecordStats()
    examples = []
    for source in [sources] if isinstance(sources, str) else sources:
        for record in read_records(source, on_bad_record, stats=stats, check_tags=check_tags, layout=layout):
            try:
                examples.append(tokenize_record(record, tokenizer, max_len))
            except BadRecord as e:
                stats.kept -= 1
                stats.bad(e, on_bad_record)
    return examples, stats


def split_examples(examples: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held out): an example is held out when the hash of its id falls below eval_fraction, so the
    split does not change when records are added or reordered."""
    def held_out(ex):
        h = int.from_bytes(hashlib.sha256(ex.id.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
        return h < eval_fraction
    return [e for e in examples if not held_out(e)], [e for e in examples if held_out(e)]


class PackedRows:
    """Random-access rows of example indices over epochs (see module docstring). len is sys.maxsize when
    num_epochs is None (train until total_steps)."""

    def __init__(self, lengths: Sequence[int], seq_len: int, seed: int = 0, shuffle: bool = True,
                 pack: bool = True, num_epochs: int | None = None):
        if not len(lengths):
            raise ValueError("no examples to batch: every record was bad or the sources are empty")
        self.lengths, self.seq_len, self.seed = np.asarray(lengths), seq_len, seed
        self.shuffle, self.pack, self.num_epochs = shuffle, pack, num_epochs
        self._epochs: list[list[list[int]]] = []
        self._starts = [0]                     # global index of each epoch's first row

    def epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            k = len(self._epochs)
            order = (np.random.default_rng([self.seed, k]).permutation(len(self.lengths)) if self.shuffle
                     else np.arange(len(self.lengths)))
            self._epochs.append(pack_rows(self.lengths, self.seq_len, order, self.pack))
            self._starts.append(self._starts[-1] + len(self._epochs[-1]))
        return self._epochs[e]

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize
        self.epoch(self.num_epochs - 1)
        return self._starts[self.num_epochs]

    def __getitem__(self, index: int) -> list[int]:
        e = 0
        while True:
            rows = self.epoch(e)
            if index < self._starts[e + 1]:
                return rows[index - self._starts[e]]
            e += 1


def train_batches(examples: list[Example], *, seq_len: int, batch_size: int, seed: int = 0, pack: bool = True,
                  shuffle: bool = True, num_epochs: int | None = None, pad_id: int = 0, process_index: int = 0,
                  process_count: int = 1):
    """A grain IterDataset of batches [batch_size, seq_len] (per process); iterate it with `iter(...)` and
    checkpoint the iterator with get_state()/set_state()."""
    import grain

    rows = grain.MapDataset.source(PackedRows([len(e) for e in examples], seq_len, seed, shuffle, pack, num_epochs))
    if process_count > 1:
        rows = rows[process_index::process_count]
    batches = rows.map(lambda row: collate_row([examples[i] for i in row], seq_len, pad_id))
    batches = batches.batch(batch_size, drop_remainder=True, batch_fn=collate)
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))


def eval_batches(examples: list[Example], *, seq_len: int, batch_size: int, pack: bool = True,
                 pad_id: int = 0) -> list[dict[str, np.ndarray]]:
    """All held-out examples once, in order; the last batch is filled with empty rows (loss_mask False)."""
    rows = [collate_row([examples[i] for i in row], seq_len, pad_id)
            for row in pack_rows([len(e) for e in examples], seq_len, range(len(examples)), pack)]
    empty = collate_row([], seq_len, pad_id)
    out = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        out.append(collate(chunk + [empty] * (batch_size - len(chunk))))
    return out

"""Packing tokenised examples into fixed-length rows with segment ids and per-segment positions.

A row holds whole examples one after another (segments 1, 2, ...; 0 is padding). Within a segment
targets[t] = input_ids[t + 1] and loss_mask[t] = example mask[t + 1], so the loss at t trains the prediction of
token t + 1; the last token of each segment has no target (mask False), so nothing is ever trained across a
segment boundary. positions restart at 0 in each segment, and the model's attention must not cross segments
(it gets segment_ids). Packed or padded one example per row, the set of (context, target, mask) triples is the
same, so summed losses and gradients agree.

    rows = pack_rows([len(e) for e in examples], seq_len=4096, order=range(len(examples)))
    batch = collate([collate_row([examples[i] for i in row], 4096, pad_id) for row in rows[:8]])
    # {"input_ids", "targets", "loss_mask", "positions", "segment_ids"}: [B, T]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELDS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")


def pack_rows(lengths: Sequence[int], seq_len: int, order: Sequence[int], pack: bool = True) -> list[list[int]]:
    """Example indices per row, taken in `order`: first fit into the open rows (each row's total <= seq_len);
    pack=False gives one example per row. Raises when an example is longer than seq_len."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}: drop over-long examples when "
                             "tokenising (max_len <= seq_len)")
        if pack:
            for r, free in enumerate(room):
                if n <= free:
                    rows[r].append(i)
                    room[r] -= n
                    break
            else:
                rows.append([i])
                room.append(seq_len - n)
        else:
            rows.append([i])
    return rows


def collate_row(examples, seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """One row [T=seq_len] from examples (each with input_ids int32 [n] and loss_mask bool [n])."""
    row = {"input_ids": np.full(seq_len, pad_id, np.int32), "targets": np.full(seq_len, pad_id, np.int32),
           "loss_mask": np.zeros(seq_len, bool), "positions": np.zeros(seq_len, np.int32),
           "segment_ids": np.zeros(seq_len, np.int32)}
    pos = 0
    for segment, ex in enumerate(examples, 1):
        ids, mask = np.asarray(ex.input_ids), np.asarray(ex.loss_mask, bool)
        n = len(ids)
        if pos + n > seq_len:
            raise ValueError(f"examples of {pos + n} tokens do not fit a row of {seq_len}")
        row["input_ids"][pos:pos + n] = ids
        row["targets"][pos:pos + n - 1] = ids[1:]
        row["loss_mask"][pos:pos + n - 1] = mask[1:]
        row["positions"][pos:pos + n] = np.arange(n, dtype=np.int32)
        row["segment_ids"][pos:pos + n] = segment
        pos += n
    return row


def collate(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Stack rows into a batch: every field [B, T]."""
    return {k: np.stack([r[k] for r in rows]) for k in FIELDS}

"""Packing (segment ids, per-segment positions, no cross-segment targets) and the grain pipeline's resumable
order."""
import json
import pathlib

import numpy as np
import pytest

from oresearcher.data import (
    Example,
    PackedRows,
    collate,
    collate_row,
    eval_batches,
    load_examples,
    pack_rows,
    split_examples,
    train_batches,
)
from oresearcher.model.tokenizer import Tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def random_examples(n, rng, lo=3, hi=40):
    out = []
    for i in range(n):
        length = int(rng.integers(lo, hi))
        out.append(Example(input_ids=rng.integers(1, 500, length).astype(np.int32),
                           loss_mask=rng.random(length) < 0.6, id=f"e{i}"))
    return out


@pytest.fixture(scope="module")
def fixture_examples():
    tok = Tokenizer.from_dir(FIXTURES / "tiny_tokenizer")
    examples, stats = load_examples(str(FIXTURES / "trajectories.jsonl"), tok, max_len=4096)
    assert stats.kept == 48
    return examples


def test_pack_rows_first_fit():
    lengths = [5, 4, 3, 6, 2, 7]
    rows = pack_rows(lengths, 10, range(6))
    assert rows == [[0, 1], [2, 3], [4, 5]]
    assert pack_rows(lengths, 10, [5, 4, 3, 2, 1, 0]) == [[5, 4], [3, 2], [1, 0]]
    assert pack_rows(lengths, 10, range(6), pack=False) == [[i] for i in range(6)]
    with pytest.raises(ValueError, match="example 5 has 7 tokens > seq_len 6"):
        pack_rows(lengths, 6, range(6))


def segments(row):
    """{segment id: (input_ids, targets, loss_mask, positions)} of a collated row."""
    out = {}
    for k in np.unique(row["segment_ids"]):
        if k == 0:
            continue
        at = row["segment_ids"] == k
        out[int(k)] = tuple(row[f][at] for f in ("input_ids", "targets", "loss_mask", "positions"))
    return out


def test_packed_rows_hold_the_same_training_triples_as_padded_rows():
    rng = np.random.default_rng(0)
    examples = random_examples(30, rng)
    seq_len = 64
    packed = [collate_row([examples[i] for i in row], seq_len, pad_id=0) for row in pack_rows(
        [len(e) for e in examples], seq_len, range(30))]
    padded = [collate_row([e], seq_len, pad_id=0) for e in examples]
    assert len(packed) < len(padded)
    from_packed = [seg for row in packed for seg in segments(row).values()]
    from_padded = [segments(row)[1] for row in padded]
    assert len(from_packed) == len(from_padded) == 30
    by_ids = {tuple(s[0]): s for s in from_packed}
    for seg in from_padded:
        other = by_ids[tuple(seg[0])]
        for a, b in zip(seg, other):
            np.testing.assert_array_equal(a, b)
    # Summed over rows, the trained (target, mask) pairs are the same multiset.
    trained = lambda rows: sorted(int(t) for r in rows for t in r["targets"][r["loss_mask"]])
    assert trained(packed) == trained(padded)
    assert sum(int(r["loss_mask"].sum()) for r in packed) == sum(int(e.loss_mask[1:].sum()) for e in examples)


def test_no_target_crosses_a_segment():
    rng = np.random.default_rng(1)
    examples = random_examples(6, rng, 5, 9)
    row = collate_row(examples, 64, pad_id=0)
    seg, pos = row["segment_ids"], row["positions"]
    start = 0
    for k, ex in enumerate(examples, 1):
        n = len(ex)
        assert (seg[start:start + n] == k).all() and (pos[start:start + n] == np.arange(n)).all()
        np.testing.assert_array_equal(row["targets"][start:start + n - 1], ex.input_ids[1:])
        np.testing.assert_array_equal(row["loss_mask"][start:start + n - 1], ex.loss_mask[1:])
        assert not row["loss_mask"][start + n - 1]          # last token of a segment predicts nothing
        start += n
    assert (seg[start:] == 0).all() and not row["loss_mask"][start:].any()
    # Wherever a target is trained, the next token is in the same segment and is that target.
    t = np.flatnonzero(row["loss_mask"])
    assert (seg[t + 1] == seg[t]).all() and (row["input_ids"][t + 1] == row["targets"][t]).all()
    with pytest.raises(ValueError, match="do not fit a row of 10"):
        collate_row(examples, 10)


def test_epochs_visit_every_example_once():
    lengths = np.random.default_rng(2).integers(3, 50, 100)
    source = PackedRows(lengths, 128, seed=3, num_epochs=3)
    for e in range(3):
        visited = sorted(i for row in source.epoch(e) for i in row)
        assert visited == list(range(100))
        assert all(sum(lengths[i] for i in row) <= 128 for row in source.epoch(e))
    assert source.epoch(0) != source.epoch(1)               # a new permutation per epoch
    assert len(source) == sum(len(source.epoch(e)) for e in range(3))
    assert source[len(source.epoch(0))] == source.epoch(1)[0]


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def same(a, b):
    return all(all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_pipeline_batches_and_resume(fixture_examples):
    kwargs = dict(seq_len=4096, batch_size=2, seed=7)
    it = iter(train_batches(fixture_examples, **kwargs))
    first = take(it, 3)
    assert {k: v.shape for k, v in first[0].items()} == {k: (2, 4096) for k in
                                                         ("input_ids", "targets", "loss_mask", "positions",
                                                          "segment_ids")}
    state = json.loads(json.dumps(it.get_state()))           # what a checkpoint stores
    rest = take(it, 20)                                      # crosses into the second epoch
    fresh = iter(train_batches(fixture_examples, **kwargs))  # a new process restoring the checkpoint
    fresh.set_state(state)
    assert same(take(fresh, 20), rest)
    again = iter(train_batches(fixture_examples, **kwargs))
    assert same(take(again, 3), first)
    other = iter(train_batches(fixture_examples, **{**kwargs, "seed": 8}))
    assert not same(take(other, 3), first)


def test_pipeline_processes_split_rows(fixture_examples):
    kwargs = dict(seq_len=4096, batch_size=2, seed=1)
    whole = take(iter(train_batches(fixture_examples, **{**kwargs, "batch_size": 4})), 2)
    parts = [take(iter(train_batches(fixture_examples, **kwargs, process_index=p, process_count=2)), 2)
             for p in range(2)]
    for step in range(2):
        rows = np.concatenate([parts[0][step]["input_ids"], parts[1][step]["input_ids"]])
        want = whole[step]["input_ids"][[0, 2, 1, 3]]        # process p takes every second row
        np.testing.assert_array_equal(rows, want)


def test_unpacked_and_finite_pipeline(fixture_examples):
    ds = train_batches(fixture_examples, seq_len=4096, batch_size=4, seed=0, pack=False, shuffle=False,
                       num_epochs=1)
    batches = list(ds)
    assert len(batches) == 12
    assert all((b["segment_ids"].max(axis=1) == 1).all() for b in batches)
    np.testing.assert_array_equal(batches[0]["input_ids"][0, :len(fixture_examples[0])],
                                  fixture_examples[0].input_ids)


def test_eval_batches_and_split(fixture_examples):
    train, held = split_examples(fixture_examples, 0.25)
    assert 0 < len(held) < len(fixture_examples) and len(train) + len(held) == len(fixture_examples)
    assert split_examples(list(reversed(fixture_examples)), 0.25)[1] == list(reversed(held))
    batches = eval_batches(held, seq_len=4096, batch_size=4)
    rows = sum(len(b["input_ids"]) for b in batches)
    assert rows % 4 == 0 and rows >= -(-len(held) // 2)
    trained = sum(int(b["loss_mask"].sum()) for b in batches)
    assert trained == sum(int(e.loss_mask[1:].sum()) for e in held)


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no examples to batch"):
        PackedRows([], 16)
    assert collate([collate_row([], 4)])["input_ids"].shape == (1, 4)

"""The stop automata of several stop sets side by side in one table, so one decode call serves rows that stop on
different strings (a server's requests each bring their own `stop`).

Each stop set's table (sampler.stop_table: [n + 1, V], state n = MATCH) keeps its states, shifted to its own
range of the joint table; every set's MATCH becomes the joint table's last row. A row starts its turn at its set's
first state and moves only within that set's range until it matches, so the decode program, which only reads
`table[state, token]` and compares with the last row, is unchanged. The joint table's rows are padded to a power
of two: the decode program compiles once per table shape, not once per mix of stop sets.

The alternative, one engine run per distinct stop set taking turns, would make a request wait for every slot of
another set to drain: the lockstep batching the engine replaces.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oresearcher import sampler as sampler_lib


class StopTables:
    """Joint tables of the stop sets in the slots, memoized: the last `keep` mixes (each up to a few MB)."""

    def __init__(self, sampler: sampler_lib.Sampler, keep: int = 8):
        self.sampler = sampler
        self.keep = keep
        self._memo: collections.OrderedDict = collections.OrderedDict()

    def __call__(self, sets: Sequence[tuple[str, ...]]) -> tuple[jax.Array, dict[tuple[str, ...], int]]:
        """(the joint table [M + 1, V] (row M: MATCH), each set's start state)."""
        key = tuple(sorted(set(sets)))
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        tables = [np.asarray(self.sampler.stop_table(stop)) for stop in key]
        sizes = [t.shape[0] - 1 for t in tables]       # each set's states, its MATCH row left out
        match = sampler_lib._bucket(sum(sizes) + 1, 8) - 1
        joint = np.full((match + 1, tables[0].shape[1]), match, np.int32)
        starts, offset = {}, 0
        for stop, t, n in zip(key, tables, sizes):
            joint[offset:offset + n] = np.where(t[:n] == n, match, t[:n] + offset)
            starts[stop] = offset
            offset += n
        self._memo[key] = (jnp.asarray(joint), starts)
        if len(self._memo) > self.keep:
            self._memo.popitem(last=False)
        return self._memo[key]

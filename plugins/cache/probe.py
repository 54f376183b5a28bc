"""The row table's probes, compiled (numba): one pass over a batch of rows, each row's probe
walked to its end in machine code. A probe is a few dependent loads into a table of millions of
slots; in numpy each round of a batch's probes is several passes over temporaries, which costs
more than the loads themselves. Imported on first use (`RowTable` does), so the CLI starts
without the compiler; compiled once per machine (`cache=True`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engramsim.plugins.cache.rowtable import EMPTY, MULTIPLIER


@njit(cache=True, nogil=True)
def _slot(row: np.int64, shift: np.uint64) -> np.int64:
    return np.int64((np.uint64(row) * MULTIPLIER) >> shift)


@njit(cache=True, nogil=True)
def find(keys: np.ndarray, rows: np.ndarray, shift: np.uint64, mask: np.int64,
         held: np.ndarray, at: np.ndarray, missing: np.ndarray) -> int:
    """For each row: `held[i]`, and `at[i]` where its probe stopped (its slot, else the EMPTY slot
    ending it); the indices of the rows not held go to `missing`, in order; returns how many."""
    count = 0
    for i in range(rows.size):
        row = rows[i]
        slot = _slot(row, shift)
        while True:
            key = keys[slot]
            if key == row or key == EMPTY:
                break
            slot = (slot + 1) & mask
        at[i] = slot
        held[i] = key == row
        if key != row:
            missing[count] = i
            count += 1
    return count


@njit(cache=True, nogil=True)
def insert(keys: np.ndarray, rows: np.ndarray, start: np.ndarray, hashed: bool, shift: np.uint64, mask: np.int64,
           at: np.ndarray) -> int:
    """Put each row (none held) in the first free slot (EMPTY or a tombstone) from its start (its
    hash if `hashed`, else `start[i]`); its slot to `at[i]`; returns how many EMPTY slots it took."""
    taken = 0
    for i in range(rows.size):
        row = rows[i]
        slot = _slot(row, shift) if hashed else start[i]
        while keys[slot] >= 0:
            slot = (slot + 1) & mask
        if keys[slot] == EMPTY:
            taken += 1
        keys[slot] = row
        at[i] = slot
    return taken

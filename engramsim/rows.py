"""Row ids kept as sorted unique arrays (a step's lookups, a hot set, a staging area), and
membership in them: one binary search per row, never a set or a dense mask over the table."""

from __future__ import annotations

import numpy as np


def member(sorted_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask of `rows` found in `sorted_rows` (sorted, unique)."""
    if not sorted_rows.size or not rows.size:
        return np.zeros(rows.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_rows, rows), sorted_rows.size - 1)
    return sorted_rows[at] == rows

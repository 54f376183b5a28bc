"""One Engram layer as the real backends run it, once its rows are on the device.

The step's unique rows are assembled (fetched ones from the landing buffer, rows served from HBM
from the resident table or cache), every token's per-head rows are mapped onto them with
np.searchsorted on the sorted unique rows, and the real EngramModule runs. All tokens of a step
go through it as one sequence [1, tokens, hc_mult, hidden], the residual copied into every mHC
branch and the branch outputs averaged back: the short conv then runs across sequence boundaries
and keeps no decode state between steps, which changes values, not the work. Calibration times
this same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engramsim.backends.device import to_index
from engramsim.backends.engram_module import EngramModule
from engramsim.backends.tables import row_values
from engramsim.scenario import Engram


@dataclass(frozen=True)
class LayerRows:
    """Where one step's rows of one Engram layer come from."""

    unique: np.ndarray  # every row the step needs, sorted
    token_rows: np.ndarray  # [tokens, heads]: each token's row per head (values of `unique`)
    landed: torch.Tensor  # device rows that crossed the link, in `fetched` order
    fetched: np.ndarray  # the needed rows that crossed the link (a subset of `unique`, sorted)
    resident: torch.Tensor | None  # device table (or cache) the other rows are read from
    resident_index: np.ndarray  # per row of `unique` not fetched: its index into `resident`


def engram_forward(module: EngramModule, rows: LayerRows, engram: Engram, h: torch.Tensor) -> torch.Tensor:
    """h + the Engram layer's output for the step's tokens (h: [tokens, hidden])."""
    where, tokens = h.device, h.shape[0]
    unique = rows.landed.new_empty(rows.unique.size, rows.landed.shape[1])
    fetched_at = np.searchsorted(rows.unique, rows.fetched)
    if rows.fetched.size:
        unique.index_copy_(0, to_index(fetched_at, where), rows.landed[: rows.fetched.size])
    if rows.resident_index.size:
        if rows.resident is None:
            raise RuntimeError("rows are served from HBM but no resident table or cache was allocated")
        in_hbm = np.ones(rows.unique.size, dtype=bool)
        in_hbm[fetched_at] = False
        unique.index_copy_(0, to_index(np.flatnonzero(in_hbm), where),
                           rows.resident.index_select(0, to_index(rows.resident_index, where)))
    slots = np.searchsorted(rows.unique, rows.token_rows)
    e = row_values(unique, engram, h.dtype).index_select(0, to_index(slots.reshape(-1), where))
    branches = h.view(1, tokens, 1, -1).expand(1, tokens, engram.hc_mult, h.shape[-1])
    return h + module(branches, e.view(1, tokens, engram.d_mem))[0].mean(dim=1)

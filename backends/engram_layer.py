"""One Engram layer as the real backends run it, once its rows are on the device.

The step's unique rows are assembled (fetched ones from the landing buffer, rows served from HBM
from the resident table or cache), every token's per-head rows are mapped onto them with
np.searchsorted on the sorted unique rows, and the real EngramModule runs. All rows of a step
go through it as one sequence [1, rows, hc_mult, hidden] (rows beyond the tokens are CUDA-graph
padding: they read the step's first row, as every other GEMM of a padded step computes them). The
branches are the backbone's mHC streams when it has `hc_mult` of them; otherwise the residual (the
mean of the backbone's streams, if it has a different number) is copied into every branch and
the branch outputs averaged back into it. The short conv then runs across sequence boundaries and
keeps no decode state between steps, which changes values, not the work. Calibration times this
same function.
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
    """h + the Engram layer's output for the step's rows (h: [rows, hidden], or mHC streams [rows, n, hidden])."""
    where, computed = h.device, h.shape[0]
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
    slots = np.zeros((computed, rows.token_rows.shape[1]), dtype=np.int64)  # padding rows read the first row
    slots[: rows.token_rows.shape[0]] = np.searchsorted(rows.unique, rows.token_rows)
    e = row_values(unique, engram, h.dtype).index_select(0, to_index(slots.reshape(-1), where)).view(1, computed, engram.d_mem)
    if h.dim() == 3 and h.shape[1] == engram.hc_mult:  # the backbone's streams are the branches
        return h + module(h.unsqueeze(0), e)[0]
    x = h if h.dim() == 2 else h.mean(dim=1)
    y = module(x.view(1, computed, 1, -1).expand(1, computed, engram.hc_mult, x.shape[-1]), e)[0].mean(dim=1)
    return h + (y if h.dim() == 2 else y.unsqueeze(1))

"""What one Engram layer holds for a real run: its host table, a ring of staging and landing
slots for fetches in flight, the rows served from HBM (a resident table or a cache-sized buffer
mirroring the cache plugin's contents), and its EngramModule.

A fetch for step s uses slot s % slots, so a fetch issued steps ahead never overwrites rows a
step before it has yet to read. A cache is mirrored, never a whole-table copy: the buffer holds
`capacity_rows` rows, and after each step's Engram layer the rows the cache admitted are copied
in from the landing slot, into the slots of the rows it evicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engramsim.backends.device import Device, to_index
from engramsim.backends.engram_layer import LayerRows
from engramsim.backends.engram_module import EngramModule
from engramsim.backends.fetch import Buffers
from engramsim.plan import FetchPlan
from engramsim.strategies import TableInfo


class CacheBuffer:
    """A device buffer of `capacity` rows and which row sits in which slot."""

    def __init__(self, capacity: int, width: int, dtype: torch.dtype, device: Device) -> None:
        self.rows = device.landing(capacity, width, dtype)
        self.slot_of: dict[int, int] = {}
        self.free = list(range(capacity - 1, -1, -1))

    def slots(self, rows: np.ndarray) -> np.ndarray:
        return np.fromiter((self.slot_of[int(r)] for r in rows), dtype=np.int64, count=rows.size)

    def update(self, plan: FetchPlan, landed: torch.Tensor) -> None:
        """Apply the plan's evictions, then copy its admitted rows in from `landed` (the step's
        fetched rows, misses first in sorted order)."""
        for row in plan.evicted:
            self.free.append(self.slot_of.pop(int(row)))
        if plan.admitted.size:
            source = np.searchsorted(plan.fetch[: plan.misses], plan.admitted)
            slots = np.array([self.free.pop() for _ in range(plan.admitted.size)], dtype=np.int64)
            self.slot_of.update(zip(plan.admitted.tolist(), slots.tolist()))
            where = self.rows.device
            self.rows.index_copy_(0, to_index(slots, where), landed.index_select(0, to_index(source, where)))


@dataclass
class LayerMemory:
    info: TableInfo
    table: torch.Tensor  # host memory, all heads: [rows, width]
    landing: list[torch.Tensor]  # device slots where fetched rows land
    staging: list[torch.Tensor] | None  # host slots the gather writes (staged transport only)
    zero_copy: torch.Tensor | None  # what a zero-copy gather reads (zero-copy transport only)
    resident: torch.Tensor | None  # the whole table in HBM (a pass that places it there)
    cache: CacheBuffer | None  # the cache's rows in HBM (a cache with capacity)
    module: EngramModule

    def buffers(self, step: int) -> Buffers:
        slot = step % len(self.landing)
        return Buffers(self.table, None if self.staging is None else self.staging[slot], self.landing[slot], self.zero_copy)

    def rows(self, plan: FetchPlan, token_rows: np.ndarray) -> LayerRows:
        """Where the step's rows come from: fetched ones from its landing slot, the others from
        the resident table (placed in HBM) or the cache (hits)."""
        if plan.staged.size:  # RealSession refuses a prefetch that stages rows: a plan with them is a bug
            raise RuntimeError(f"layer {plan.layer} of step {plan.step} is served staged rows, which the real backends do not keep")
        fetched = plan.fetch[: plan.misses]
        served = np.setdiff1d(plan.rows, fetched, assume_unique=True)
        if plan.placed_hbm and plan.cache_hits:
            raise RuntimeError(f"layer {plan.layer}: rows both placed in HBM and cached (whole-table placements only)")
        source: torch.Tensor | None = None
        index = served
        if plan.placed_hbm:
            source = self.resident
        elif self.cache is not None:
            source, index = self.cache.rows, self.cache.slots(served)
        return LayerRows(plan.rows, token_rows, self.buffers(plan.step).landing, fetched, source, index)

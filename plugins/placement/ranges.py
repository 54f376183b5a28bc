"""Placements that cut each table into contiguous row ranges, one tier each."""

from __future__ import annotations

import numpy as np

from engramsim.strategies import Placement, TableInfo, Tier

TIER_OF_NAME = {"hbm": Tier.HBM, "host": Tier.HOST, "cxl": Tier.CXL, "nvme": Tier.NVME}


class RangePlacement(Placement):
    """Base: subclasses say, per table, which tier holds each run of rows (`ranges`)."""

    def ranges(self, layer: int, table: TableInfo) -> list[tuple[int, int, Tier]]:
        """(start, stop, tier) runs covering rows 0 .. table.rows - 1 in order."""
        raise NotImplementedError

    def _cuts(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per layer: run starts, stops and tiers (adjacent runs of one tier merged, empty ones dropped)."""
        cached = self.__dict__.get("_cut_cache")
        if cached is not None:
            return cached
        cuts = {}
        for layer, table in self.setup.tables.items():
            runs: list[tuple[int, int, Tier]] = []
            for start, stop, tier in self.ranges(layer, table):
                if stop <= start:
                    continue
                if runs and runs[-1][2] == tier and runs[-1][1] == start:
                    runs[-1] = (runs[-1][0], stop, tier)
                else:
                    runs.append((start, stop, tier))
            covered = sum(stop - start for start, stop, _ in runs)
            if covered != table.rows or (runs and (runs[0][0] != 0 or runs[-1][1] != table.rows)):
                raise ValueError(f"placement {self.name!r} covers {covered} of layer {layer}'s {table.rows} rows")
            cuts[layer] = (np.array([r[0] for r in runs], dtype=np.int64), np.array([r[1] for r in runs], dtype=np.int64),
                           np.array([int(r[2]) for r in runs], dtype=np.uint8))
        self.__dict__["_cut_cache"] = cuts
        return cuts

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        starts, _, tiers = self._cuts()[layer]
        if tiers.size == 1:
            return np.full(rows.shape, tiers[0], dtype=np.uint8)
        return tiers[np.searchsorted(starts, rows, side="right") - 1]

    def layer_bytes(self, layer: int) -> dict[Tier, int]:
        starts, stops, tiers = self._cuts()[layer]
        row_bytes = self.setup.tables[layer].row_bytes
        out: dict[Tier, int] = {}
        for start, stop, tier in zip(starts, stops, tiers):
            out[Tier(int(tier))] = out.get(Tier(int(tier)), 0) + int(stop - start) * row_bytes
        return out

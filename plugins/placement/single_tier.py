"""Placements that put every row of every table in one tier."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engramsim.strategies import Placement, Tier


class SingleTier(Placement):
    """Base for whole-table placements: subclasses name the tier."""

    tier: ClassVar[Tier]

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return np.full(rows.shape, self.tier, dtype=np.uint8)

    def layer_bytes(self, layer: int) -> dict[Tier, int]:
        return {self.tier: self.setup.tables[layer].bytes}

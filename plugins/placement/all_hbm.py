"""Every table wholly in HBM: the zero-transfer baseline the overhead is measured against."""

from __future__ import annotations

import numpy as np

from engramsim.registry import register
from engramsim.strategies import Placement, Tier


@register("placement", "all-hbm")
class AllHBM(Placement):
    """Every row in GPU HBM: no transfers, the baseline."""

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return np.full(rows.shape, Tier.HBM, dtype=np.uint8)

    def bytes_per_tier(self) -> dict[Tier, int]:
        return {Tier.HBM: sum(t.bytes for t in self.setup.tables.values())}

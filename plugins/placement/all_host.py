"""Every table wholly in host DRAM, as in the paper's offload experiment (Table 4)."""

from __future__ import annotations

import numpy as np

from engramsim.registry import register
from engramsim.strategies import Placement, Tier


@register("placement", "all-host")
class AllHost(Placement):
    """Every row in host DRAM: each lookup not cached crosses the link."""

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return np.full(rows.shape, Tier.HOST, dtype=np.uint8)

    def bytes_per_tier(self) -> dict[Tier, int]:
        return {Tier.HOST: sum(t.bytes for t in self.setup.tables.values())}

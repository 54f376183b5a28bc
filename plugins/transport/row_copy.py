"""One DMA per row: the naive baseline everyone starts from.

Each row is its own cudaMemcpyAsync from pinned host memory (or CXL memory), so every row pays
the link's fixed cost per copy (~6-7 us): a fetch of n rows costs n x latency plus its bytes.
"""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Tier, TierRows, Transport


@register("transport", "row-copy")
class RowCopy(Transport):
    """One DMA copy per row, each paying the DMA's fixed cost (the naive baseline)."""

    reaches = frozenset({Tier.HOST, Tier.CXL})

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        return [Stage(StageKind.H2D, rows, rows * row_bytes, copies=rows)]

    def fetch_stages(self, rows: TierRows, row_bytes: int) -> list[Stage]:
        return self.per_tier(rows, lambda n, tier: Stage(StageKind.H2D, n, n * row_bytes, copies=n, source=tier))

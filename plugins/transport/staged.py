"""CPU gather into pinned staging memory, then one DMA: few large copies instead of many tiny ones.

A per-cudaMemcpy fixed cost of ~6-7 us makes one copy per row hopeless for 128-320 B rows, so
the rows of a layer's fetch are packed by CPU threads first and cross the link as one transfer.
"""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Transport


@register("transport", "staged")
class Staged(Transport):
    """CPU gather into a pinned staging buffer, then one DMA per layer per step."""

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        size = rows * row_bytes
        return [Stage(StageKind.GATHER, rows, size), Stage(StageKind.H2D, rows, size)]

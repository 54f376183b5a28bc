"""A GPU kernel reads the rows straight from pinned host memory over UVA (vLLM's way in 2026).

No CPU work and no staging copy, but every row is its own small read over the link, so the
cost model prices it by transactions rather than by one bulk transfer.
"""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Transport


@register("transport", "zero-copy")
class ZeroCopy(Transport):
    """GPU gather kernel reading pinned host memory directly (UVA zero-copy)."""

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        return [Stage(StageKind.ZERO_COPY, rows, rows * row_bytes)]

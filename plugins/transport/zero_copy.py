"""A GPU kernel reads the rows straight from pinned host memory over UVA (vLLM's way in 2026).

No CPU work and no staging copy, but every row is its own small read over the link, so the
cost model prices it by transactions rather than by one bulk transfer. CXL memory is host
memory to the GPU (a CPU-less NUMA node), so the kernel reads it too, at its latency and no
faster than the expanders serve; NVMe is not memory and cannot be read this way.
"""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Tier, TierRows, Transport


class ZeroCopyBase(Transport):
    """A GPU gather kernel reading host DRAM or CXL memory over the link; `slowdown` stretches compute while it runs."""

    reaches = frozenset({Tier.HOST, Tier.CXL})
    in_order = True  # one gather and one DMA, or one zero-copy read, whatever the rows

    def slowdown(self) -> float:
        return 1.0

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        return [Stage(StageKind.ZERO_COPY, rows, rows * row_bytes, slowdown=self.slowdown())]

    def fetch_stages(self, rows: TierRows, row_bytes: int) -> list[Stage]:
        return self.per_tier(rows, lambda n, tier: Stage(StageKind.ZERO_COPY, n, n * row_bytes, slowdown=self.slowdown(), source=tier))


@register("transport", "zero-copy")
class ZeroCopy(ZeroCopyBase):
    """GPU gather kernel reading pinned host memory directly (UVA zero-copy)."""

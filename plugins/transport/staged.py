"""CPU gather into pinned staging memory, then one DMA: few large copies instead of many tiny ones.

A per-cudaMemcpy fixed cost of ~6-7 us makes one copy per row hopeless for 128-320 B rows, so
the rows of a layer's fetch are packed by CPU threads first and cross the link as one transfer.
Rows in CXL memory are packed by the same threads at CXL's load latency; rows on NVMe are first
read, page by page, into host memory (a bounce buffer) and then packed with the host rows.
"""

from __future__ import annotations

from engramsim.kernels import nvme_pages
from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Tier, TierRows, Transport


class StagedBase(Transport):
    """Gather (host DRAM, CXL, or NVMe pages read into host memory) into staging, then one DMA."""

    reaches = frozenset({Tier.HOST, Tier.CXL, Tier.NVME})
    in_order = True  # one gather and one DMA, or one zero-copy read, whatever the rows

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        size = rows * row_bytes
        return [Stage(StageKind.GATHER, rows, size), Stage(StageKind.H2D, rows, size)]

    def page_bytes(self) -> int:
        nvme = self.setup.hardware.nvme
        return 4096 if nvme is None else nvme.page_bytes

    def fetch_stages(self, rows: TierRows, row_bytes: int) -> list[Stage]:
        """NVMe pages into host memory first, then one gather of the host-memory rows (host DRAM
        and the NVMe rows just read), one of the CXL rows, and one DMA of them all."""
        host, cxl, nvme = (int(rows[t].size) if t in rows else 0 for t in (Tier.HOST, Tier.CXL, Tier.NVME))
        out = []
        if nvme:
            pages = nvme_pages(rows[Tier.NVME], row_bytes, self.page_bytes())
            out.append(Stage(StageKind.NVME_READ, nvme, pages * self.page_bytes()))
        if host + nvme:
            out.append(Stage(StageKind.GATHER, host + nvme, (host + nvme) * row_bytes))
        if cxl:
            out.append(Stage(StageKind.CXL_GATHER, cxl, cxl * row_bytes))
        total = host + cxl + nvme
        out.append(Stage(StageKind.H2D, total, total * row_bytes))
        return out


@register("transport", "staged")
class Staged(StagedBase):
    """CPU gather into a pinned staging buffer, then one DMA per layer per step."""

"""Direct NVMe-to-GPU reads (GPUDirect Storage style): pages go from the drives straight to HBM.

Rows on NVMe skip the host: the drives DMA the 4 KiB pages holding them into HBM over the link,
priced by the drives' IOPS and bandwidth and the link's bandwidth for whole pages (the GPU keeps
the rows it needs from them), so a staging slot in HBM is sized for whole pages
(`landing_row_bytes`). Rows in host DRAM or CXL memory take the staged path after them.
"""

from __future__ import annotations

import numpy as np

from engramsim.kernels import nvme_pages
from engramsim.plugins.transport.staged import StagedBase
from engramsim.registry import register
from engramsim.strategies import Stage, StageKind, Tier, TierRows


@register("transport", "nvme-direct")
class NVMeDirect(StagedBase):
    """NVMe pages read straight into HBM (GPUDirect Storage), no host hop; other tiers staged."""

    def landing_row_bytes(self, row_bytes: int, tiers: frozenset[Tier]) -> int:
        """A row read from NVMe lands in HBM with the rest of its page(s): a slot holds a step's
        rows each in its own pages (rows scattered over the table rarely share one)."""
        if Tier.NVME not in tiers:
            return row_bytes
        page = self.page_bytes()
        return -(-row_bytes // page) * page

    def fetch_stages(self, rows: TierRows, row_bytes: int) -> list[Stage]:
        nvme = rows.get(Tier.NVME)
        rest: dict[Tier, np.ndarray] = {tier: ids for tier, ids in rows.items() if tier != Tier.NVME}
        out: list[Stage] = []
        if nvme is not None and nvme.size:
            pages = nvme_pages(nvme, row_bytes, self.page_bytes())
            out.append(Stage(StageKind.NVME_DIRECT, int(nvme.size), pages * self.page_bytes()))
        if any(ids.size for ids in rest.values()):
            out += super().fetch_stages(rest, row_bytes)
        return out

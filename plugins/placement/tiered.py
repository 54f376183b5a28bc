"""Tables spread over HBM, host DRAM, CXL memory and NVMe by capacity, fastest tier first.

The rule, deterministic and simple: take the tiers in the order given; each takes as many rows
as its budget holds (the param, or the whole tier the hardware has) until all rows of all tables
are placed; the last tier takes whatever is left (so a shortfall is refused naming it). Every
tier takes the same fraction of every table, and within a table the lowest row ids go to the
fastest tier: rows are laid out order-major, so 2-gram heads fill the fast tiers first.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engramsim.plugins.placement.ranges import TIER_OF_NAME, RangePlacement
from engramsim.registry import register
from engramsim.scenario import host_tables_bytes
from engramsim.strategies import Params, SetupContext, TableInfo, Tier

GIB = 1 << 30
TierName = Literal["hbm", "host", "cxl", "nvme"]


class TieredParams(Params):
    tiers: list[TierName] = Field(default=["hbm", "host", "cxl", "nvme"], min_length=1,
                                  description="tiers to fill, fastest first; the last takes any rows left over")
    hbm_gib: float = Field(default=0.0, ge=0, le=1 << 20, description="GiB of HBM for table rows (counted in the HBM budget)")
    host_gib: float | None = Field(default=None, ge=0, le=1 << 30, description="GiB of host DRAM for rows; null: all the host has")
    cxl_gib: float | None = Field(default=None, ge=0, le=1 << 30, description="GiB of CXL memory for rows; null: the whole CXL tier")
    nvme_gib: float | None = Field(default=None, ge=0, le=1 << 30, description="GiB of NVMe for rows; null: the whole NVMe tier")

    @field_validator("tiers")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each tier once, got {value}")
        return value


@register("placement", "tiered")
class Tiered(RangePlacement):
    """Rows in HBM / host DRAM / CXL / NVMe by capacity, fastest tier first, the same share of every table."""

    Params = TieredParams

    def __init__(self, params: TieredParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.order = [TIER_OF_NAME[name] for name in params.tiers]
        self.shares = self._fill(params)
        self.split = self._split()

    def _budget(self, tier: Tier, params: TieredParams) -> float:
        """Bytes a tier may take: the param, else what the hardware's tier holds (0 when it has none;
        host DRAM: a node's sockets, `scenario.host_tables_bytes`)."""
        hw = self.setup.hardware
        given = {Tier.HBM: params.hbm_gib, Tier.HOST: params.host_gib, Tier.CXL: params.cxl_gib, Tier.NVME: params.nvme_gib}[tier]
        if given is not None:
            return given * GIB
        if tier == Tier.HOST:
            return host_tables_bytes(hw.host.dram_gib, self.setup.scenario.hardware.node)
        found = hw.cxl if tier == Tier.CXL else hw.nvme if tier == Tier.NVME else None
        return 0.0 if found is None else found.capacity_bytes

    def _fill(self, params: TieredParams) -> list[int]:
        """Rows each tier takes over all tables, in `order`."""
        tables = self.setup.tables
        total = sum(t.rows for t in tables.values())
        row_bytes = max((t.row_bytes for t in tables.values()), default=1)
        shares, left = [], total
        for tier in self.order:
            take = min(left, int(self._budget(tier, params) // row_bytes))
            shares.append(take)
            left -= take
        shares[-1] += left
        return shares

    def _split(self) -> dict[int, list[int]]:
        """Rows of each table per tier: each tier's share split in proportion to the tables' rows,
        the rows rounding leaves given to the first tiers with room (so no tier exceeds its share)."""
        tables = self.setup.tables
        total = sum(t.rows for t in tables.values())
        split = {layer: [share * t.rows // total if total else 0 for share in self.shares] for layer, t in tables.items()}
        room = [share - sum(split[layer][k] for layer in tables) for k, share in enumerate(self.shares)]
        for layer, t in sorted(tables.items()):
            left = t.rows - sum(split[layer])
            for k in range(len(self.shares)):
                take = min(left, room[k])
                split[layer][k] += take
                room[k] -= take
                left -= take
        return split

    def ranges(self, layer: int, table: TableInfo) -> list[tuple[int, int, Tier]]:
        out, start = [], 0
        for tier, rows in zip(self.order, self.split[layer]):
            out.append((start, start + rows, tier))
            start += rows
        return out

    def tier_budgets(self) -> dict[Tier, tuple[str, int]]:
        params = self.params
        assert isinstance(params, TieredParams)
        given = {Tier.HBM: ("hbm_gib", params.hbm_gib if params.hbm_gib > 0 else None), Tier.HOST: ("host_gib", params.host_gib),
                 Tier.CXL: ("cxl_gib", params.cxl_gib), Tier.NVME: ("nvme_gib", params.nvme_gib)}
        return {tier: (name, int(value * GIB)) for tier, (name, value) in given.items() if value is not None and tier in self.order}

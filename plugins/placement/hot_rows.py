"""Hot rows pinned in HBM: each table's `hbm_rows` most looked-up rows by a frequency profile sit
in HBM, every other row in host DRAM (or CXL memory, NVMe).

The profile (`engramsim/frequency.py`) counts the rows of `profile_range` of `profile_trace`
(the scenario's trace by default) hashed with the scenario's hashing plugin; on the served trace
the served requests' windows are cut out of it (`exclude_served`), or, with `exclude_served:
false`, a range holding any served token is refused naming
`strategies.placement.params.profile_range`. results.json's `sources.placement` says which tokens
chose the rows. Rows in HBM are counted in the HBM budget (fewer when the profile looked up
fewer); the rest in their tier, checked against its capacity. Rows are placed before serving
starts (not priced on the link). The real backends run whole-table placements only and refuse
this split one (simulate it: --backend sim).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from engramsim.frequency import ProfileParams, profiled
from engramsim.plugins.placement.ranges import TIER_OF_NAME
from engramsim.registry import register
from engramsim.rows import member
from engramsim.strategies import Placement, SetupContext, Tier


class HotRowsParams(ProfileParams):
    hbm_rows: PositiveInt = Field(le=1 << 40, description="rows per Engram layer placed in HBM: the profile's most looked-up rows")
    rest: Literal["host", "cxl", "nvme"] = Field(default="host", description="the tier holding every other row")


@register("placement", "hot-rows")
class HotRows(Placement):
    """Each table's most looked-up rows (a frequency profile built on tokens never served) in HBM, the rest in host DRAM (or CXL, NVMe)."""

    Params = HotRowsParams
    params: HotRowsParams

    def __init__(self, params: HotRowsParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.split, found = profiled(setup, params, "placement")
        self.hot = {layer: found.hot_rows(layer, params.hbm_rows) for layer in setup.tables}
        for rows in self.hot.values():
            rows.flags.writeable = False
        self.rest = TIER_OF_NAME[params.rest]

    def describe(self) -> str:
        """Which tokens chose the rows in HBM, in words."""
        return self.split.describe()

    def source(self) -> dict:
        """Which tokens chose the rows in HBM, as data (results.json's `sources`)."""
        return self.split.source()

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(rows.shape, self.rest, dtype=np.uint8)
        out[member(self.hot[layer], rows)] = Tier.HBM
        return out

    def layer_bytes(self, layer: int) -> dict[Tier, int]:
        table, hot = self.setup.tables[layer], int(self.hot[layer].size)
        return {Tier.HBM: hot * table.row_bytes, self.rest: (table.rows - hot) * table.row_bytes}

    def refusal(self) -> tuple[str, str] | None:
        over = [(layer, t.rows) for layer, t in self.setup.tables.items() if self.params.hbm_rows > t.rows]
        if over:
            return "hbm_rows", f"{self.params.hbm_rows:,} rows, but layer {over[0][0]}'s table holds {over[0][1]:,}"
        return None

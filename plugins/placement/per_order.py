"""Whole n-gram orders in HBM: e.g. every 2-gram head there, the 3- and 4-gram heads elsewhere.

A table holds its heads order-major ([2-gram heads, 3-gram heads, ...]), so an order's heads are
one run of rows; 2-gram rows are the fewest distinct n-grams and the most often shared.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engramsim.plugins.placement.ranges import TIER_OF_NAME, RangePlacement
from engramsim.registry import register
from engramsim.strategies import Params, TableInfo, Tier


class PerOrderParams(Params):
    hbm_orders: list[int] = Field(default=[2], description="n-gram orders whose heads sit in HBM (2 .. max_ngram)")
    rest: Literal["host", "cxl", "nvme"] = Field(default="host", description="the tier holding the other orders' heads")

    @field_validator("hbm_orders")
    @classmethod
    def _orders(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(order < 2 for order in value):
            raise ValueError(f"distinct n-gram orders of 2 or more, got {value}")
        return value


@register("placement", "per-order")
class PerOrder(RangePlacement):
    """Every head of the chosen n-gram orders in HBM, the other orders' heads in host DRAM (or CXL, NVMe)."""

    Params = PerOrderParams

    def _params(self) -> PerOrderParams:
        assert isinstance(self.params, PerOrderParams)
        return self.params

    def refusal(self) -> tuple[str, str] | None:
        top = self.setup.scenario.model.engram.max_ngram
        outside = [order for order in self._params().hbm_orders if order > top]
        if outside:
            return "hbm_orders", f"order {outside[0]} is not in the tables: model.engram.max_ngram is {top} (orders 2..{top})"
        return None

    def ranges(self, layer: int, table: TableInfo) -> list[tuple[int, int, Tier]]:
        orders = self.setup.scenario.model.engram.max_ngram - 1
        per_order = len(table.head_sizes) // orders
        rest, chosen = TIER_OF_NAME[self._params().rest], set(self._params().hbm_orders)
        out = []
        for i in range(orders):
            first = int(table.offsets[i * per_order])
            last = int(table.offsets[(i + 1) * per_order]) if (i + 1) * per_order < len(table.offsets) else table.rows
            out.append((first, last, Tier.HBM if i + 2 in chosen else rest))
        return out

"""The five strategy interfaces. A policy is one subclass plus `@register(kind, name)`.

The interfaces carry what state-of-the-art policies need: per-step state (caches are objects
that live for the whole run), the future (`StepView.future`, for Belady and k-step lookahead),
per-layer budgets, tiers beyond HBM and host DRAM, and transports with their own cost shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from engramsim.scenario import Scenario
    from engramsim.simulator.profile import HardwareProfile
    from engramsim.steps import Step


class Tier(IntEnum):
    """Where a table row lives. Lower is closer to the GPU."""

    HBM = 0
    HOST = 1
    CXL = 2
    NVME = 3


@dataclass(frozen=True)
class TableInfo:
    """One Engram layer's table: all heads in one array, head k's rows at offsets[k]."""

    layer: int
    rows: int
    row_bytes: int  # one head's row
    head_sizes: np.ndarray  # per-head prime sizes, order-major
    offsets: np.ndarray

    @property
    def bytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class SetupContext:
    """What a strategy may look at when it is built."""

    scenario: Scenario
    tables: dict[int, TableInfo]
    hardware: HardwareProfile
    seed: int


@dataclass(frozen=True)
class StepView:
    """What a strategy may look at during a step: the step itself and, if known, the future."""

    step: Step
    future: Callable[[int], list[Step]] = field(default=lambda k: [])  # up to k next steps (offline workloads)


class Params(BaseModel):
    """Base of every plugin's params model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy:
    """Common shape: a params model, built once per run with the setup context."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params, setup: SetupContext) -> None:
        self.params = params
        self.setup = setup


class Placement(Strategy):
    """Which tier holds each row of each Engram table."""

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """Tier of each row (uint8 array shaped like `rows`)."""
        raise NotImplementedError

    def bytes_per_tier(self) -> dict[Tier, int]:
        """Bytes this placement puts in each tier, checked against the hardware's capacities."""
        raise NotImplementedError


class Cache(Strategy):
    """An HBM cache in front of the rows placed outside HBM; lives for the whole run."""

    def capacity_rows(self, layer: int) -> int:
        return 0

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        """Hit mask for `rows` (all outside HBM). The cache may admit the misses as a side effect."""
        return np.zeros(rows.shape, dtype=bool)

    def occupancy_rows(self, layer: int) -> int:
        return 0


class Prefetch(Strategy):
    """When each Engram layer's fetch is issued within a step, and what else to fetch."""

    def issue_layer(self, layer: int, view: StepView) -> int:
        """Backbone block at whose start the fetch for Engram `layer` is issued: 0 is the step's
        start, `layer` itself means on demand."""
        raise NotImplementedError

    def speculative_rows(self, layer: int, view: StepView) -> np.ndarray:
        """Rows fetched beyond the step's needs (e.g. a predictor's guess); none by default."""
        return np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Stage:
    """One leg of a fetch: `resource` is priced by the cost model and occupies a simulated resource.

    gather: CPU threads copy rows from host DRAM into a pinned staging buffer;
    h2d: one DMA of `bytes` over the link by a copy engine;
    zero_copy: a GPU kernel reads the rows over the link directly.
    """

    resource: Literal["gather", "h2d", "zero_copy"]
    rows: int
    bytes: int


class Transport(Strategy):
    """How missing rows travel to the GPU, as a pipeline of stages."""

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        raise NotImplementedError

"""The five strategy interfaces. A policy is one subclass plus `@register(kind, name)`.

The interfaces carry what state-of-the-art policies need: per-step state (caches are objects
that live for the whole run), the future (`StepView.future`, for Belady and k-step lookahead),
per-layer budgets, tiers beyond HBM and host DRAM, and transports with their own cost shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from engramsim.hardware.profile import HardwareProfile
    from engramsim.scenario import Engram, Scenario
    from engramsim.steps import Step


class Tier(IntEnum):
    """Where a table row lives. Lower is closer to the GPU."""

    HBM = 0
    HOST = 1
    CXL = 2
    NVME = 3


PRICED_TIERS = (Tier.HBM, Tier.HOST)
"""Tiers the executors can price and run today; a placement using another is refused."""


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


def tables_bytes(tables: Mapping[int, TableInfo]) -> int:
    """Bytes of all the Engram tables together, whatever tiers hold them."""
    return sum(t.bytes for t in tables.values())


def cache_bytes(tables: Mapping[int, TableInfo], capacity_rows: Callable[[int], int]) -> int:
    """Bytes the HBM caches of these tables reserve, from each layer's capacity in rows."""
    return sum(capacity_rows(layer) * t.row_bytes for layer, t in tables.items())


@dataclass(frozen=True)
class SetupContext:
    """What a strategy may look at when it is built."""

    scenario: Scenario
    tables: dict[int, TableInfo]
    hardware: HardwareProfile
    seed: int


def _no_future(k: int) -> list[Step]:
    return []


@dataclass(frozen=True)
class StepView:
    """What a strategy may look at during a step: the step itself and, when known, the future.

    `future(k)` returns up to k steps that follow this one, exactly as they will run. The
    sequence is known once it cannot depend on timing (every request has arrived, as in an
    offline workload); before that it is empty.
    """

    step: Step
    future: Callable[[int], list[Step]] = field(default=_no_future)


class Params(BaseModel):
    """Base of every plugin's params model: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_BaseParams: TypeAlias = Params
"""`Params` for annotations inside classes whose own `Params` attribute shadows it."""


class Strategy:
    """Common shape: a params model, built once per run with the setup context."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: _BaseParams, setup: SetupContext) -> None:
        self.params = params
        self.setup = setup


@dataclass(frozen=True)
class HashingSetup:
    """What a hashing plugin is built from: the scenario's Engram config and the vocabulary."""

    engram: Engram
    vocab_size: int  # compressed vocabulary size
    pad_id: int  # the compressed pad id


class Hashing:
    """Token ids → row ids per Engram layer. One table per layer, all heads end to end; head k
    of layer L owns rows offsets[L][k] .. offsets[L][k] + head_sizes[L][k] - 1."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params

    @classmethod
    def from_setup(cls, params: _BaseParams, setup: HashingSetup) -> Hashing:
        """Build the plugin for a scenario (the registry calls this)."""
        raise NotImplementedError

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        """Per layer, every head's table size (int64, one per head)."""
        raise NotImplementedError

    def hash_sequences(self, compressed_ids: np.ndarray, starts: np.ndarray, threads: int = 2) -> dict[int, np.ndarray]:
        """Per layer, the row of every token and head, [N, heads] int64, within each head's own
        table (before offsets); sequences laid end to end start at `starts`."""
        raise NotImplementedError

    @cached_property
    def offsets(self) -> dict[int, np.ndarray]:
        """Per layer, each head's first row in the layer's single table."""
        return {layer: np.concatenate([[0], np.cumsum(p)[:-1]]).astype(np.int64) for layer, p in self.head_sizes.items()}

    @cached_property
    def rows_per_layer(self) -> dict[int, int]:
        return {layer: int(p.sum()) for layer, p in self.head_sizes.items()}


class Placement(Strategy):
    """Which tier holds each row of each Engram table."""

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """Tier of each row (uint8 array shaped like `rows`)."""
        raise NotImplementedError

    def bytes_per_tier(self) -> dict[Tier, int]:
        """Bytes this placement puts in each tier, checked against the hardware's capacities."""
        raise NotImplementedError


@dataclass(frozen=True)
class CacheLookup:
    """What one cache lookup found and changed, in the lookup's own terms (O(rows looked up))."""

    hit: np.ndarray  # bool, one per row looked up: held before this lookup
    admitted: np.ndarray  # where the rows taken in sit among the rows looked up: sorted int64 indices, misses only
    evicted: np.ndarray  # the rows this lookup dropped, sorted int64 (each held before it)


class Cache(Strategy):
    """An HBM cache in front of the rows placed outside HBM; lives for the whole run.

    Its capacity is reserved in HBM (and counted against it). The planner checks after every
    lookup that the cache stays within `capacity_rows` and that only rows the step fetches are
    admitted; a real backend mirrors the contents in a buffer of `capacity_rows` rows.

    A cache that implements `lookup_changes` says what each lookup admitted and evicted, and the
    planner's checks cost O(rows looked up); otherwise the planner diffs `contents` before and
    after each `lookup`, which costs O(capacity) a step (fine for a few thousand rows).
    """

    def capacity_rows(self, layer: int) -> int:
        return 0

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        """Hit mask for `rows` (sorted, unique, all outside HBM). The cache may admit the misses
        (and evict others) as a side effect."""
        return np.zeros(rows.shape, dtype=bool)

    def lookup_changes(self, layer: int, rows: np.ndarray, view: StepView) -> CacheLookup | None:
        """`lookup`, also saying what it admitted and evicted; None (the default, and nothing
        looked up): this cache does not say, and the planner calls `lookup` instead."""
        return None

    def contents(self, layer: int) -> np.ndarray:
        """The rows of `layer` the cache holds now, sorted int64."""
        return np.empty(0, dtype=np.int64)

    def size(self, layer: int) -> int:
        """How many rows of `layer` the cache holds now."""
        return int(self.contents(layer).size)

    def holds(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """Mask of the `rows` the cache holds now (any order)."""
        return np.isin(rows, self.contents(layer))


class Prefetch(Strategy):
    """When each Engram layer's fetch is issued, and what else to fetch.

    A fetch is issued at the start of block `issue_layer(...)` of the step `lead_steps(...)`
    steps before the step that needs it. A lead beyond what is known of the future (see
    `StepView.future`) or beyond `horizon` is cut back; with lead 0 the block is at most the
    Engram layer itself (on demand).
    """

    horizon: int = 0  # the most steps ahead this policy ever issues a fetch (a class or instance attribute)

    def issue_layer(self, layer: int, view: StepView) -> int:
        """Block at whose start the fetch for Engram `layer` of `view.step` is issued: 0 is the
        issuing step's start, `layer` itself (with lead 0) means on demand."""
        raise NotImplementedError

    def lead_steps(self, layer: int, view: StepView) -> int:
        """How many steps before `view.step` its fetch for `layer` is issued; 0 by default."""
        return 0

    def speculative_rows(self, layer: int, view: StepView) -> np.ndarray:
        """Rows fetched beyond the step's needs (e.g. a predictor's guess); none by default.
        Rows the step needs or that sit in HBM are dropped, duplicates are fetched once."""
        return np.empty(0, dtype=np.int64)

    def speculative_budget(self, layer: int) -> int:
        """The most speculative rows one fetch may carry: the staging room reserved (and counted
        against HBM) for them. Rows beyond it are dropped."""
        return 0


class StageKind(Enum):
    """One leg of a fetch, each priced by its own cost-model formula and simulated resource.

    gather: CPU threads copy rows from host DRAM into a pinned staging buffer;
    h2d: one DMA of `bytes` over the link by a copy engine;
    zero_copy: a GPU kernel reads the rows over the link directly.
    """

    GATHER = "gather"
    H2D = "h2d"
    ZERO_COPY = "zero_copy"


@dataclass(frozen=True)
class Stage:
    kind: StageKind
    rows: int
    bytes: int


class Transport(Strategy):
    """How missing rows travel to the GPU, as a pipeline of stages."""

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        raise NotImplementedError

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
    from engramsim.steps import LayerLookup, Step


class Tier(IntEnum):
    """Where a table row lives. Lower is closer to the GPU."""

    HBM = 0
    HOST = 1
    CXL = 2
    NVME = 3


PRICED_TIERS = (Tier.HBM, Tier.HOST, Tier.CXL, Tier.NVME)
"""Tiers the simulator prices (CXL and NVMe by their own physics, when the hardware has them);
the real backends run HBM and host DRAM only and refuse the others."""

TierRows: TypeAlias = Mapping[Tier, np.ndarray]
"""The rows of one fetch by the tier that holds them (row ids within the layer's table)."""


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


def cache_bytes(tables: Mapping[int, TableInfo], capacity_rows: Callable[[int], int], shared: bool = False) -> int:
    """Bytes the HBM caches of these tables reserve, from each layer's capacity in rows; a cache
    `shared` by all layers is one buffer, counted once: its capacity in the widest layer's rows."""
    if shared:
        return max((capacity_rows(layer) * t.row_bytes for layer, t in tables.items()), default=0)
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


def _no_lookups(seq: int) -> Mapping[int, LayerLookup]:
    return {}


@dataclass(frozen=True)
class Waiting:
    """The waiting queue at a step's start, in queue order (preempted sequences first, then the
    arrived ones not yet admitted): none of them runs in the step. `tokens[i]`: the tokens the
    prefill of `seqs[i]` feeds (its prompt, and for a preempted one the tokens it had sampled);
    `lookups(seq)`: the rows that prefill looks up, per Engram layer (found when read, by the
    workload's own hashing of the window, as a step's lookups are)."""

    seqs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    tokens: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    lookups: Callable[[int], Mapping[int, LayerLookup]] = field(default=_no_lookups)


def _no_waiting() -> Waiting:
    return Waiting()


@dataclass(frozen=True)
class StepView:
    """What a strategy may look at during a step: the step itself, when known the future, and the
    waiting queue.

    `future(k)` returns up to k steps that follow this one, exactly as they will run. The
    sequence is known once it cannot depend on timing (every request has arrived, as in an
    offline workload); before that it is empty. `waiting()` is the queue at the step's start
    (`Waiting`): requests that arrived and wait to be admitted, known whatever the timing; empty
    for a step seen ahead of its turn and for the last step a run makes.
    """

    step: Step
    future: Callable[[int], list[Step]] = field(default=_no_future)
    waiting: Callable[[], Waiting] = field(default=_no_waiting)


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

    def layer_bytes(self, layer: int) -> dict[Tier, int]:
        """Bytes of `layer`'s table this placement puts in each tier (each one allocation)."""
        raise NotImplementedError

    def bytes_per_tier(self) -> dict[Tier, int]:
        """Bytes this placement puts in each tier, all layers together, checked against the hardware's
        capacities: the sum of `layer_bytes` (NotImplementedError where neither is written)."""
        if type(self).layer_bytes is Placement.layer_bytes:
            raise NotImplementedError(f"placement {self.name!r} writes neither layer_bytes nor bytes_per_tier")
        out: dict[Tier, int] = {}
        for layer in self.setup.tables:
            for tier, size in self.layer_bytes(layer).items():
                out[tier] = out.get(tier, 0) + size
        return out

    def tier_budgets(self) -> dict[Tier, tuple[str, int]]:
        """Capacities the scenario gave this placement per tier, as (the param naming it, bytes),
        checked against the hardware's; none by default."""
        return {}

    def refusal(self) -> tuple[str, str] | None:
        """(param, problem) when this placement's params do not fit the scenario, which the session
        then refuses in one line naming the param; None by default."""
        return None


@dataclass(frozen=True)
class CacheLookup:
    """What one cache lookup found and changed, in the lookup's own terms (O(rows looked up))."""

    hit: np.ndarray  # bool, one per row looked up: held before this lookup
    admitted: np.ndarray  # where the rows taken in sit among the rows looked up: sorted int64 indices, misses only
    evicted: np.ndarray  # the rows this lookup dropped, sorted int64 (each held before it)
    elsewhere: Mapping[int, np.ndarray] = field(default_factory=dict)  # a shared cache: rows of other layers it dropped, by layer


class Cache(Strategy):
    """An HBM cache in front of the rows placed outside HBM; lives for the whole run.

    Its capacity is reserved in HBM (and counted against it). The planner checks after every
    lookup that the cache stays within `capacity_rows` and that only rows the step fetches are
    admitted; a real backend mirrors the contents in a buffer of `capacity_rows` rows.

    A cache `shared` by all Engram layers has one capacity for them together: `capacity_rows` is
    that whole capacity for every layer (one layer may fill it), HBM counts it once, the planner
    also checks the layers' rows together against it, and a lookup may evict other layers' rows
    (`CacheLookup.elsewhere`). The real backends refuse a shared cache.

    A cache that implements `lookup_changes` says what each lookup admitted and evicted, and the
    planner's checks cost O(rows looked up); otherwise the planner diffs `contents` before and
    after each `lookup`, which costs O(capacity) a step (fine for a few thousand rows).
    """

    shared: bool = False  # one capacity for all Engram layers together (a class or instance attribute)

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

    Staged rows: rows fetched in an earlier step and held in an HBM staging area serve a later
    step's misses, which that step then does not fetch (its Engram layer waits for the fetch that
    carried them). Two kinds: a step's speculative rows serve the next step (`serve_speculative`,
    on by default), and with `fetch_waiting` the planner fetches the prompt rows of the requests
    waiting to be admitted (`StepView.waiting`) at the start of a step whose future is not
    known, at most `max_staged_rows(layer)` rows per layer, held until their prefill has run.
    The real backends refuse a policy that stages rows.
    """

    horizon: int = 0  # the most steps ahead this policy ever issues a fetch (a class or instance attribute)
    deadline: bool = False  # an Engram layer whose rows have not landed when the compute reaches it proceeds without them
    fetch_waiting: bool = False  # fetch the waiting requests' prompt rows into the staging area (a class or instance attribute)
    serve_speculative: bool = True  # a step's speculative rows serve the next step's misses (a class or instance attribute)

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

    def max_staged_rows(self, layer: int) -> int:
        """With `fetch_waiting`: the most waiting requests' prompt rows of `layer` held in the
        staging area at once; a request whose rows do not fit is not staged (its prefill fetches
        them). 0 by default."""
        return 0

    def staged_rows(self, layer: int, arrivals_timed: bool) -> int:
        """Rows of `layer` this policy may hold in the staging area for later steps (the room HBM
        must count beside the staging slots): the waiting requests' rows (only while requests
        arrive over time: offline, nothing waits once the future is known) and, served to the
        next step, one fetch's speculative rows."""
        return ((self.max_staged_rows(layer) if self.fetch_waiting and arrivals_timed else 0)
                + (self.speculative_budget(layer) if self.serve_speculative else 0))


class StageKind(Enum):
    """One leg of a fetch, each priced by its own cost-model formula and simulated resource.

    gather: CPU threads copy rows from host DRAM into a pinned staging buffer;
    h2d: `copies` DMAs of `bytes` in all over the link by a copy engine (one, or one per row);
    zero_copy: a GPU kernel reads the rows over the link directly (from host DRAM or CXL memory);
    cxl_gather: CPU threads copy rows from CXL memory into staging (load latency and bandwidth);
    nvme_read: the SSDs read the 4 KiB pages holding the rows into host memory (IOPS and bandwidth);
    nvme_direct: the SSDs write those pages straight into HBM over the link (GPUDirect Storage).
    """

    GATHER = "gather"
    H2D = "h2d"
    ZERO_COPY = "zero_copy"
    CXL_GATHER = "cxl_gather"
    NVME_READ = "nvme_read"
    NVME_DIRECT = "nvme_direct"


@dataclass(frozen=True)
class Stage:
    """One leg: `rows` rows, `bytes` moved (for NVMe legs, whole pages). `copies`: DMAs issued,
    each paying the link's fixed cost; `slowdown`: how much longer compute takes while this leg
    runs beside it (SM interference; 1 none); `source`: the tier an h2d or zero-copy leg reads
    (CXL memory adds its latency and bounds the bandwidth)."""

    kind: StageKind
    rows: int
    bytes: int
    copies: int = 1
    slowdown: float = 1.0
    source: Tier = Tier.HOST


class Transport(Strategy):
    """How missing rows travel to the GPU, as a pipeline of stages.

    `stages` prices rows from host DRAM, the tier every transport reaches; `fetch_stages` is
    the pipeline for rows of several tiers (`reaches` lists those a transport can read, and a
    placement that puts rows elsewhere is refused). A transport with `batches_layers` moves every
    fetch issued at the same point (several Engram layers or steps) as one pipeline (`batch`).
    A transport `in_order` promises that every fetch of host rows has the same legs, at most a
    gather then one DMA copy or one zero-copy read, so each pays the same fixed latency before the
    link whatever its rows: fetches then reach every resource in the order they were issued, which
    lets the simulator time them without events (simulator/fast.py checks the promise per fetch).
    """

    reaches: ClassVar[frozenset[Tier]] = frozenset({Tier.HOST})
    batches_layers: ClassVar[bool] = False
    in_order: ClassVar[bool] = False

    def stages(self, rows: int, row_bytes: int) -> list[Stage]:
        raise NotImplementedError

    def fetch_stages(self, rows: TierRows, row_bytes: int) -> list[Stage]:
        """The pipeline for a fetch's rows by tier; by default `stages` of the host rows (the
        session refuses tiers a transport does not reach before anything runs)."""
        self.check_reach(rows)
        host = rows.get(Tier.HOST)
        return self.stages(0 if host is None else int(host.size), row_bytes)

    def landing_row_bytes(self, row_bytes: int, tiers: frozenset[Tier]) -> int:
        """HBM bytes one fetched row takes in a staging slot, when the table has rows in `tiers`:
        the row itself, unless the transport lands more than the row (whole pages)."""
        return row_bytes

    def check_reach(self, rows: TierRows) -> None:
        """ValueError naming the tiers holding rows of the fetch that this transport cannot read."""
        outside = [tier.name for tier, ids in rows.items() if ids.size and tier not in self.reaches]
        if outside:
            raise ValueError(f"transport {self.name!r} cannot reach rows in {', '.join(outside)}")

    def per_tier(self, rows: TierRows, leg: Callable[[int, Tier], Stage]) -> list[Stage]:
        """One leg, `leg(rows, tier)`, per reached tier holding rows of the fetch, fastest tier first."""
        self.check_reach(rows)
        return [leg(n, tier) for tier in sorted(self.reaches) if (n := int(rows[tier].size) if tier in rows else 0)]

    def batch(self, pipelines: list[list[Stage]]) -> list[Stage]:
        """One pipeline for fetches issued together: each (kind, slowdown, source) once, in first-seen
        order, with rows and bytes summed and one DMA per leg."""
        merged: dict[tuple[StageKind, float, Tier], Stage] = {}
        for pipeline in pipelines:
            for stage in pipeline:
                key = (stage.kind, stage.slowdown, stage.source)
                had = merged.get(key)
                merged[key] = stage if had is None else Stage(stage.kind, had.rows + stage.rows, had.bytes + stage.bytes, 1,
                                                              stage.slowdown, stage.source)
        return list(merged.values())

"""What every executor records: spans on the timeline, one record per (step, Engram layer) and per
step, and the outcome of a whole pass.

The simulator and the real backends build exactly these objects, so results.py turns either
into the same files and "sim vs real" is a diff of two outputs. Records are built with keyword
arguments only; a span says what it is with a `SpanKind`, never through its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class SpanKind(Enum):
    """What a span on the timeline is. `lane` is where the timeline draws it."""

    HOST = "host"  # per-step host work: plan, input layout, hand-off of the first fetches
    BLOCKS = "blocks"  # a run of backbone blocks
    ENGRAM = "engram"  # one Engram layer's compute after its rows are on the device
    HEAD = "head"  # final norm, LM head, sampling
    STALL = "stall"  # the compute stream waiting for an Engram layer's rows
    GATHER = "gather"  # host threads packing rows into staging
    H2D = "h2d"  # a DMA copy over the link
    ZERO_COPY = "zero-copy"  # a GPU kernel reading rows over the link

    @property
    def lane(self) -> str:
        return LANE_OF[self]

    @property
    def is_compute(self) -> bool:
        return LANE_OF[self] == "compute"

    @property
    def on_link(self) -> bool:
        """Spans whose bytes cross the host-device link (the link's busy time is their sum)."""
        return self in (SpanKind.H2D, SpanKind.ZERO_COPY)


LANE_OF = {
    SpanKind.HOST: "compute", SpanKind.BLOCKS: "compute", SpanKind.ENGRAM: "compute", SpanKind.HEAD: "compute",
    SpanKind.STALL: "stall", SpanKind.GATHER: "gather", SpanKind.H2D: "copy", SpanKind.ZERO_COPY: "zero-copy",
}
LANES = ("compute", "stall", "gather", "copy", "zero-copy")


@dataclass(frozen=True, kw_only=True)
class Span:
    """One busy interval. `step` is the step it belongs to: for a fetch, the step whose rows it
    moves (a fetch issued ahead runs during an earlier step). `blocks` is a BLOCKS span's range."""

    kind: SpanKind
    start_s: float
    end_s: float
    step: int
    layer: int | None = None
    bytes: int = 0
    blocks: tuple[int, int] | None = None  # first and last block of a BLOCKS span

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    @property
    def name(self) -> str:
        """The label the timeline shows ("blocks 0-3", "h2d L1", "head")."""
        if self.blocks is not None:
            return f"{self.kind.value} {self.blocks[0]}-{self.blocks[1]}"
        return self.kind.value if self.layer is None else f"{self.kind.value} L{self.layer}"


@dataclass(kw_only=True)
class LayerRecord:
    """One Engram layer in one step: how each needed row was served, what moved, when.

    rows_unique = rows_placed_hbm + cache_hits + rows_missed: every row the step needs is
    served exactly once. Speculative rows are fetched but never count as served.
    """

    layer: int
    rows_unique: int
    references: int
    rows_placed_hbm: int  # placed in HBM by the placement
    cache_hits: int  # outside HBM but in the HBM cache
    rows_missed: int  # outside HBM and not cached: fetched for this step
    rows_speculative: int  # fetched beyond the step's needs (a predictor's guess)
    bytes_fetched: int
    issue_step: int  # the step during which the fetch was issued (<= the record's step; < means issued ahead)
    issue_s: float
    ready_s: float  # the fetch's last byte arrived (= issue when nothing was fetched)
    stall_s: float = 0.0

    @property
    def rows_hbm(self) -> int:
        """Needed rows served from HBM: placed there or cache hits."""
        return self.rows_placed_hbm + self.cache_hits

    @property
    def rows_fetched(self) -> int:
        """Rows moved over the link for this step: misses and speculative rows."""
        return self.rows_missed + self.rows_speculative


@dataclass(kw_only=True)
class StepRecord:
    index: int
    kind: str
    start_s: float
    end_s: float
    tokens: int
    seqs: int
    layers: list[LayerRecord] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def stall_s(self) -> float:
        return sum(r.stall_s for r in self.layers)


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """One executed pass: step and layer records, the timeline, and the request-level metrics
    its scheduler recorded. results.py turns it into files and metrics."""

    steps: list[StepRecord]
    spans: list[Span]
    events: int  # simulated events (0 for a real run)
    link_busy_s: float  # seconds the link moved bytes, as the executor's link counted them
    makespan_s: float
    output_tokens: int
    prompt_tokens: int
    ttft_s: np.ndarray
    tpot_s: np.ndarray

    @property
    def throughput_tok_s(self) -> float:
        """Output tokens per second over the whole run, as nano-vLLM's benchmark reports it."""
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0

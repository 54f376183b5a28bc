"""The GPU compute stream's queue: each compute segment of a step priced by the cost model, held
until the engine simulates the queue as one stretch of compute and lays out its spans.

The one definition of what a step's compute segments cost and how their spans are laid out,
shared by the event model (`engine.Engine`, which flushes the queue as one SimPy timeout where a
fetch is issued, an Engram layer must wait, or the step ends) and the fast path
(`fast.simulate_fast`, which adds the same floats in the same order without SimPy), so the two
produce the same records and spans to the last bit; the bulk path lays out its spans the same way
(`bulk._flush`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from engramsim.records import Span, SpanKind, Timeline
from engramsim.steps import Step

if TYPE_CHECKING:
    from engramsim.simulator.cost import CostModel

Queued = tuple[float, SpanKind, int, "int | None", "tuple[int, int] | None"]
"""A compute segment enqueued: seconds, and its span's kind, step, layer and blocks."""


def add_up(values: Iterable[float]) -> float:
    """`values` added one after another from 0: the sum every executor's clock makes, on every Python
    (3.12's `sum` compensates floats, which a clock adding segment by segment never does)."""
    total = 0.0
    for value in values:
        total += value
    return total


def stretch(took: float, total: float) -> float:
    """What the queued compute's spans are scaled by when `total` seconds of it took `took`."""
    return took / total if took != total else 1.0


class ComputeQueue:
    """Compute segments priced and enqueued, not yet simulated; `lay_out` records their spans."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self._queued: list[Queued] = []

    # ---- the segments' prices -------------------------------------------------------------------
    def host(self, step: Step) -> None:
        self._queued.append((self.cost.host_time(step), SpanKind.HOST, step.index, None, None))

    def blocks(self, step: Step, start: int, stop: int) -> None:
        self._queued.append((self.cost.blocks_time(step, start, stop), SpanKind.BLOCKS, step.index, None, (start, stop - 1)))

    def engram(self, step: Step, layer: int, rows: int) -> None:
        self._queued.append((self.cost.engram_time(step, rows), SpanKind.ENGRAM, step.index, layer, None))

    def head(self, step: Step) -> None:
        self._queued.append((self.cost.head_time(step), SpanKind.HEAD, step.index, None, None))

    # ---- the queue ------------------------------------------------------------------------------
    def pending_s(self) -> float:
        """Seconds of compute queued (an issue in the middle of it happens this much later)."""
        return add_up(queued[0] for queued in self._queued)

    def lay_out(self, spans: Timeline, start: float, scale: float = 1.0) -> None:
        """Record the queued compute's spans on `spans` back to back from `start`, each `scale` times
        its seconds (zero-length ones too: the real backend records every segment), and empty the queue."""
        add = spans.add
        for seconds, kind, step, layer, blocks in self._queued:
            took = seconds * scale if scale != 1.0 else seconds
            add(Span(kind=kind, start_s=start, end_s=start + took, step=step, layer=layer, blocks=blocks))
            start += took
        self._queued.clear()

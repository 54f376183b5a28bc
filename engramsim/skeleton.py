"""The segments of one step, derived once from its plan; every executor walks the same list.

A step is: its host work; then the blocks, cut where a fetch is issued (`Issue`, possibly for a
later step) or an Engram layer waits for its rows and runs (`EngramLayer`); then the head. The
simulator prices each segment on SimPy resources; a real backend executes it with torch. Both
dispatch on the segment's type, so "sim vs real" cannot differ in what a step contains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from engramsim.plan import FetchPlan, StepPlan


@dataclass(frozen=True)
class Host:
    """Per-step host work: scheduling, planning, input layout."""


@dataclass(frozen=True)
class Issue:
    """Fetches handed to the transport at the start of `block` (some may serve later steps)."""

    block: int
    fetches: tuple[FetchPlan, ...]


@dataclass(frozen=True)
class EngramLayer:
    """Wait for the layer's rows (the wait is its stall), then run the Engram layer."""

    plan: FetchPlan


@dataclass(frozen=True)
class Blocks:
    """Backbone blocks start .. stop-1, back to back."""

    start: int
    stop: int


@dataclass(frozen=True)
class Head:
    """Final norm, LM head and sampling."""


Segment = Union[Host, Issue, EngramLayer, Blocks, Head]


def skeleton(plan: StepPlan, blocks: int) -> list[Segment]:
    """The step's segments in execution order, for a backbone of `blocks` blocks."""
    cuts = sorted({0, blocks, *plan.issues, *plan.layers})
    segments: list[Segment] = [Host()]
    for start, stop in zip(cuts, cuts[1:]):
        if start in plan.issues:
            segments.append(Issue(start, tuple(plan.issues[start])))
        if start in plan.layers:
            segments.append(EngramLayer(plan.layers[start]))
        segments.append(Blocks(start, stop))
    segments.append(Head())
    return segments

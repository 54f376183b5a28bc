"""Seconds of CUDA events since a pass started, precise however long the pass runs.

`cudaEventElapsedTime` returns a 32-bit float of milliseconds: measured from one reference event,
a mark 16 s later is known to ~1 us and one 60 s later to ~4 us, while a decode step's copy or a
small zero-copy gather lasts a few us. So marks are resolved against an anchor that moves
forward: an event already resolved, at most `REBASE_S` before the marks that follow, whose own
seconds were summed in float64. Each move adds at most one float32 rounding of a `REBASE_S`
interval (~30 ns at 0.5 s); the marks resolved against one anchor keep full precision relative
to each other.
"""

from __future__ import annotations

from typing import Any, Protocol

REBASE_S = 0.5


class TimedEvent(Protocol):
    def elapsed_time(self, end_event: Any) -> Any:
        """Milliseconds from this event to `end_event` (float32 precision, either sign)."""
        ...


class EventClock:
    """`seconds(event)`: seconds from the reference event to `event`, both recorded with timing
    and both completed."""

    def __init__(self, reference: TimedEvent) -> None:
        self._anchor, self._anchor_s = reference, 0.0

    def seconds(self, event: TimedEvent) -> float:
        ms = self._anchor.elapsed_time(event)
        seconds = self._anchor_s + ms / 1e3
        if ms > REBASE_S * 1e3:
            self._anchor, self._anchor_s = event, seconds
        return seconds

"""A third-party metric: seconds the link carried DMA copies, added to every output by one declaration."""

from __future__ import annotations

from engramsim.metrics import Metric, register
from engramsim.records import SpanKind

register(Metric(
    name="demo_h2d_ms_total", unit="ms", label="DMA time", group="link traffic", digits=3,
    meaning="time the link spent in DMA copies",
    compute=lambda c: c.outcome.spans.busy_s[SpanKind.H2D] * 1e3,  # every span, also those past the timeline's limit
))

"""Deadline mode: layer-ahead, but an Engram layer never waits for its rows.

When the compute reaches an Engram layer whose fetch has not landed, the layer proceeds at once
without those rows: no stall, and every lookup that would have read a fetched row is dropped
(the layer sees zeros for it; `lookups_dropped_pct` is the quality cost). Rows placed in HBM and
cache hits are still served. The late fetch still completes on the link (its bytes are spent),
and its rows are discarded for this step; a cache admits them as it would a landed fetch's.
The simulator honours it; the real backends refuse it (they always wait for a fetch).
"""

from __future__ import annotations

from engramsim.plugins.prefetch.layer_ahead import LayerAhead
from engramsim.registry import register


@register("prefetch", "deadline")
class Deadline(LayerAhead):
    """Issue as layer-ahead does; an Engram layer whose rows have not landed proceeds without them (lookups dropped, no stall)."""

    deadline = True

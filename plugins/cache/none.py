"""No cache: every row outside HBM is fetched every step it is needed (the paper's setting)."""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Cache


@register("cache", "none")
class NoCache(Cache):
    """No HBM cache: every lookup outside HBM is a miss."""

    # The Cache interface's defaults already describe an empty cache of zero capacity.

"""Prefetch plugins: when each Engram layer's fetch is issued within a step."""

from engramsim.plugins.prefetch import layer_ahead, on_demand  # noqa: F401

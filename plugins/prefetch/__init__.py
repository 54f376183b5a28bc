"""Prefetch plugins: when each Engram layer's fetch is issued within a step."""

from engramsim.plugins.prefetch import deadline, layer_ahead, lookahead, on_demand, prefill_ahead, speculative_decode  # noqa: F401

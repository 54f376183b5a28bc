"""Placement plugins: which tier holds each row of each Engram table."""

from engramsim.plugins.placement import all_hbm, all_host, hot_rows, per_order, tiered  # noqa: F401

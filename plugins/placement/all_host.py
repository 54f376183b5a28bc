"""Every table wholly in host DRAM, as in the paper's offload experiment (Table 4)."""

from __future__ import annotations

from engramsim.plugins.placement.single_tier import SingleTier
from engramsim.registry import register
from engramsim.strategies import Tier


@register("placement", "all-host")
class AllHost(SingleTier):
    """Every row in host DRAM: each lookup not cached crosses the link."""

    tier = Tier.HOST

"""Every table wholly in HBM: the zero-transfer baseline the overhead is measured against."""

from __future__ import annotations

from engramsim.plugins.placement.single_tier import SingleTier
from engramsim.registry import register
from engramsim.strategies import Tier


@register("placement", "all-hbm")
class AllHBM(SingleTier):
    """Every row in GPU HBM: no transfers, the baseline."""

    tier = Tier.HBM

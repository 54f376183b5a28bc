"""Fetch when the Engram layer is reached: the whole transfer is exposed as a stall."""

from __future__ import annotations

from engramsim.registry import register
from engramsim.strategies import Prefetch, StepView


@register("prefetch", "on-demand")
class OnDemand(Prefetch):
    """Issue each fetch when its Engram layer is reached (no overlap)."""

    def issue_layer(self, layer: int, view: StepView) -> int:
        return layer

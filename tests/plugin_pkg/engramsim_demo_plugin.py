"""A third-party prefetch plugin: importing this module registers it."""

from __future__ import annotations

from pydantic import PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, StepView


class DemoAheadParams(Params):
    blocks: PositiveInt = 1


@register("prefetch", "demo-ahead")
class DemoAhead(Prefetch):
    """Issue each fetch a fixed number of blocks before its Engram layer."""

    Params = DemoAheadParams
    params: DemoAheadParams

    def issue_layer(self, layer: int, view: StepView) -> int:
        return max(0, layer - self.params.blocks)

"""Issue each fetch ahead of its Engram layer so the blocks before it hide the transfer.

Lookups depend only on token ids, so a step's rows are known at its start; the paper issues
the fetch there, overlapping it with the blocks before the Engram layer. Once the order of steps
is known (every request has arrived), the fetch can also be issued steps earlier
(`lead_steps`), overlapping whole steps; the rows then wait in a staging slot in HBM.
"""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, SetupContext, StepView


class LayerAheadParams(Params):
    lead_blocks: PositiveInt | None = Field(
        default=None, description="issue this many blocks before the Engram layer; default: at the step's start"
    )
    lead_steps: NonNegativeInt = Field(
        default=0, description="issue this many steps early, at the same block (each step of lead is one more staging slot in HBM)"
    )


@register("prefetch", "layer-ahead")
class LayerAhead(Prefetch):
    """Issue each fetch at the step's start (or lead_blocks early), lead_steps steps early, overlapping earlier blocks."""

    Params = LayerAheadParams
    params: LayerAheadParams

    def __init__(self, params: LayerAheadParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.horizon = params.lead_steps

    def issue_layer(self, layer: int, view: StepView) -> int:
        lead = self.params.lead_blocks
        return 0 if lead is None else max(0, layer - lead)

    def lead_steps(self, layer: int, view: StepView) -> int:
        return self.params.lead_steps

"""Issue each fetch ahead of its Engram layer so the blocks before it hide the transfer.

Lookups depend only on token ids, so a step's rows are known at its start; the paper issues
the fetch there, overlapping it with the blocks before the Engram layer.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, StepView


class LayerAheadParams(Params):
    lead_blocks: PositiveInt | None = Field(
        None, description="issue this many blocks before the Engram layer; default: at the step's start"
    )


@register("prefetch", "layer-ahead")
class LayerAhead(Prefetch):
    """Issue each fetch at the step's start (or lead_blocks early), overlapping earlier blocks."""

    Params = LayerAheadParams
    params: LayerAheadParams

    def issue_layer(self, layer: int, view: StepView) -> int:
        lead = self.params.lead_blocks
        return 0 if lead is None else max(0, layer - lead)

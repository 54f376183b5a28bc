"""Cross-step prefill prefetch: a prompt's rows are fetched while earlier steps run.

A prompt is known as soon as its request is admitted to the waiting queue, so the rows of a
prefill step are exact long before the step runs. Once the order of steps is known
(`StepView.future`: every request has arrived, as in an offline workload), a prefill step's fetch
is issued at the start of the earliest step before it that the planner reaches while the prefill
step is within `max_lead_steps`: with a future known from the first step, step s is fetched during
step max(0, s - max_lead_steps). Before the future is known, and for decode and mixed steps (their
tokens are sampled by the step before), the fetch is issued as `layer-ahead` issues it: at the
start of the step itself.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, SetupContext, StepView


class PrefillAheadParams(Params):
    max_lead_steps: PositiveInt = Field(
        default=8, le=1 << 16,
        description="the most steps before a prefill step its fetch is issued (each step of lead is one more staging slot in HBM)")


@register("prefetch", "prefill-ahead")
class PrefillAhead(Prefetch):
    """Fetch each prefill step's prompt rows during the earliest earlier step the known future allows; other steps as layer-ahead."""

    Params = PrefillAheadParams
    params: PrefillAheadParams

    def __init__(self, params: PrefillAheadParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.horizon = params.max_lead_steps

    def issue_layer(self, layer: int, view: StepView) -> int:
        return 0  # the issuing step's start: the earliest point of the earliest step allowed

    def lead_steps(self, layer: int, view: StepView) -> int:
        # The planner cuts the lead to the steps it has planned ahead (none while the future is unknown).
        return self.horizon if view.step.kind == "prefill" else 0

"""Cross-step prefill prefetch: a prompt's rows are fetched while earlier steps run.

A prompt is known as soon as its request is admitted to the waiting queue, so the rows of a
prefill step are exact long before the step runs. Once the order of steps is known
(`StepView.future`: every request has arrived, as in an offline workload), a prefill step's fetch
is issued at the start of the earliest step before it that the planner reaches while the prefill
step is within `max_lead_steps`: with a future known from the first step, step s is fetched during
step max(0, s - max_lead_steps). Decode and mixed steps (their tokens are sampled by the step
before) are fetched as `layer-ahead` fetches them: at the start of the step itself.

While the future is not known (requests still arriving), with `fetch_waiting` (the default) the
prompt rows of the requests in the waiting queue are fetched at the start of the step that first
sees them waiting, into an HBM staging area of at most `max_staged_rows` rows per Engram layer
(requests that do not fit, in queue order, are fetched by their prefill), and serve the prefill
steps that need them, which do not fetch them again (engramsim/plan.py). Without it, and for the
rows not staged, a prefill step is fetched as `layer-ahead` fetches it.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, SetupContext, StepView


class PrefillAheadParams(Params):
    max_lead_steps: PositiveInt = Field(
        default=8, le=1 << 16,
        description="the most steps before a prefill step its fetch is issued (each step of lead is one more staging slot in HBM)")
    fetch_waiting: bool = Field(
        default=True,
        description="while requests are still arriving, fetch the waiting requests' prompt rows into an HBM staging area as soon as "
                    "they wait (the real backends refuse it)")
    max_staged_rows: PositiveInt = Field(
        default=1 << 17, le=1 << 40,
        description="per Engram layer, the most waiting requests' prompt rows held in the staging area at once (reserved in HBM)")


@register("prefetch", "prefill-ahead")
class PrefillAhead(Prefetch):
    """Fetch a prefill step's prompt rows in the earliest earlier step the known future allows, or as soon as its request waits."""

    Params = PrefillAheadParams
    params: PrefillAheadParams

    def __init__(self, params: PrefillAheadParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.horizon = params.max_lead_steps
        self.fetch_waiting = params.fetch_waiting

    def issue_layer(self, layer: int, view: StepView) -> int:
        return 0  # the issuing step's start: the earliest point of the earliest step allowed

    def lead_steps(self, layer: int, view: StepView) -> int:
        # The planner cuts the lead to the steps it has planned ahead (none while the future is unknown).
        return self.horizon if view.step.kind == "prefill" else 0

    def max_staged_rows(self, layer: int) -> int:
        return self.params.max_staged_rows

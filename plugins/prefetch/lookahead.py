"""k-step lookahead for offline workloads: each step's rows are fetched up to `steps` steps early,
as far ahead as a staging budget allows.

Rows fetched ahead wait in HBM until their step runs. Per Engram layer, the rows waiting during
any step (fetched during it or before, for a later step) never exceed `budget_rows`: each step
takes the longest lead (at most `steps`) that keeps every step it spans within the budget,
counting all of the step's rows (an upper bound on what it fetches), and a step that does not fit
is fetched in its own turn, as `layer-ahead` fetches it. The planner can only shorten a lead (to
the steps it has planned ahead), which keeps the rows waiting within the budget.

The steps ahead come from `StepView.future`, so this needs a known future (offline arrival, or
the tail of a timed run once every request has arrived). On decode steps it is an oracle bound:
the tokens a decode step feeds are sampled by the step before, and are known ahead only because
the trace supplies them.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import Field, PositiveInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, SetupContext, StepView


class LookaheadParams(Params):
    steps: PositiveInt = Field(default=4, le=1 << 16,
                               description="the most steps ahead a fetch is issued (each step is one more staging slot reserved in HBM)")
    budget_rows: PositiveInt = Field(default=1 << 18, le=1 << 40,
                                     description="per Engram layer, the most rows fetched ahead and waiting for their step at any time")


@register("prefetch", "lookahead")
class Lookahead(Prefetch):
    """Fetch each step's rows up to `steps` steps early from the known future, keeping the rows waiting within `budget_rows` per layer."""

    Params = LookaheadParams
    params: LookaheadParams

    def __init__(self, params: LookaheadParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.horizon = params.steps
        self._waiting: dict[int, dict[int, int]] = defaultdict(dict)  # layer -> step -> rows waiting during it (as reserved)
        self._leads: dict[tuple[int, int], int] = {}  # (step, layer) -> the lead chosen

    def issue_layer(self, layer: int, view: StepView) -> int:
        return 0

    def lead_steps(self, layer: int, view: StepView) -> int:
        step = view.step.index
        key = (step, layer)
        if key not in self._leads:
            self._leads[key] = self._reserve(layer, step, int(view.step.lookups[layer].rows.size))
            self._forget(step)
        return self._leads[key]

    def _reserve(self, layer: int, step: int, rows: int) -> int:
        """The longest lead (at most `steps`, at most `step`) whose spanned steps all keep room for
        `rows` more waiting rows; those steps then hold them."""
        if rows == 0:
            return 0
        waiting, budget = self._waiting[layer], self.params.budget_rows
        lead = 0
        while lead < min(self.params.steps, step) and waiting.get(step - lead - 1, 0) + rows <= budget:
            lead += 1
        for j in range(step - lead, step):
            waiting[j] = waiting.get(j, 0) + rows
        return lead

    def _forget(self, step: int) -> None:
        """Drop what no later step can span (steps are planned in order)."""
        oldest = step - self.params.steps
        for waiting in self._waiting.values():
            for j in [j for j in waiting if j < oldest]:
                del waiting[j]
        for key in [key for key in self._leads if key[0] < oldest]:
            del self._leads[key]

    def waiting_rows(self, layer: int) -> dict[int, int]:
        """Rows reserved as waiting during each recent step (for tests: never above the budget)."""
        return dict(self._waiting[layer])

"""A third-party speculative prefetch: alongside a step's own rows, fetch the rows the previous
step needed (a cheap stand-in for a next-token predictor), within a budget."""

from __future__ import annotations

import numpy as np
from pydantic import NonNegativeInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, SetupContext, StepView


class DemoGuessParams(Params):
    budget: NonNegativeInt = 256
    serve: bool = True  # the next step is served from the guessed rows (false: what the real backends run)


@register("prefetch", "demo-guess")
class DemoGuess(Prefetch):
    """Fetch at the step's start, plus up to `budget` rows the previous step needed."""

    Params = DemoGuessParams
    params: DemoGuessParams

    def __init__(self, params: DemoGuessParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._last: dict[int, np.ndarray] = {}
        self.serve_speculative = params.serve

    def issue_layer(self, layer: int, view: StepView) -> int:
        return 0

    def speculative_rows(self, layer: int, view: StepView) -> np.ndarray:
        guess = self._last.get(layer, np.empty(0, dtype=np.int64))
        self._last[layer] = view.step.lookups[layer].rows
        return np.concatenate([guess, guess[:8]])  # duplicates on purpose: fetched once

    def speculative_budget(self, layer: int) -> int:
        return self.params.budget

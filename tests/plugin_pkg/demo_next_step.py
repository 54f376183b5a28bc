"""A third-party prefetch that fetches each step's rows one step early, while the step before it
computes; it records what it was shown of the future, so tests can compare it with what ran."""

from __future__ import annotations

from typing import ClassVar

from pydantic import NonNegativeInt

from engramsim.registry import register
from engramsim.strategies import Params, Prefetch, StepView


class DemoNextStepParams(Params):
    block: NonNegativeInt = 0


@register("prefetch", "demo-next-step")
class DemoNextStep(Prefetch):
    """Issue each fetch at `block` of the previous step (at its own step's start when the future is unknown)."""

    Params = DemoNextStepParams
    params: DemoNextStepParams
    horizon = 1
    seen: ClassVar[list[tuple[int, list[int]]]] = []  # (step planned, indices of the future it was shown)

    def issue_layer(self, layer: int, view: StepView) -> int:
        return self.params.block

    def lead_steps(self, layer: int, view: StepView) -> int:
        DemoNextStep.seen.append((view.step.index, [s.index for s in view.future(2)]))
        return 1

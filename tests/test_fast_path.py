"""The fast path (simulator/fast.py) gives what the event model gives: a pass that moves no rows
(the all-HBM baseline, the no-Engram reference) run both ways has identical step and layer
records, spans (every float to the bit), busy time by kind, makespan and event count, for every
shipped scenario family and for the strategies that make such a pass interesting (timed
arrivals, fetches planned steps ahead, speculation, staging, a cache, a transport that slows
compute, a transport that batches layers)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import engramsim.runner as runner
from engramsim.records import RunOutcome
from engramsim.runner import passes, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare
from engramsim.simulator import engine
from engramsim.simulator.fast import never_fetches

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("scenarios/*.yaml"), *ROOT.glob("scenarios/validation/*.yaml"), *ROOT.glob("scenarios/compare/*.yaml")])
SMALL = ("workload.requests=8", "run.max_steps=400", "run.baseline=true")
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
TIMED = ("workload.arrival={kind: poisson, rate_per_s: 5}", "workload.output_len={dist: uniform, low: 4, high: 16}")  # idle waits
VARIANTS = {
    "poisson-arrivals": TIMED,
    "lead-steps": ("strategies.prefetch={name: layer-ahead, params: {lead_steps: 1}}",),
    "speculative-decode": ("strategies.prefetch=speculative-decode", *TIMED),
    "prefill-ahead": ("strategies.prefetch=prefill-ahead", *TIMED),
    "lru-cache": ("strategies.cache={name: lru, params: {rows: 100000}}",),
    "zero-copy-sm": ("strategies.transport=zero-copy-sm",),
    "staged-batched": ("strategies.transport=staged-batched",),
    "max-steps": ("run.max_steps=5",),
}
CASES = [pytest.param(path, (), id=str(path.relative_to(ROOT / "scenarios"))) for path in SHIPPED] + [
    pytest.param(QUICKSTART, extra, id=f"quickstart+{name}") for name, extra in VARIANTS.items()]


def _columns(outcome: RunOutcome) -> tuple[bytes, bytes]:
    blocks = list(outcome.steps.blocks())
    steps = np.concatenate([b.steps for b in blocks]) if blocks else np.empty(0)
    layers = np.concatenate([b.layers for b in blocks]) if blocks else np.empty(0)
    return steps.tobytes(), layers.tobytes()


def _assert_identical(fast: RunOutcome, slow: RunOutcome) -> None:
    assert len(fast.steps) == len(slow.steps) > 0
    assert _columns(fast) == _columns(slow)
    assert [record for record in fast.steps] == [record for record in slow.steps]
    assert list(fast.spans) == list(slow.spans)
    assert fast.spans.busy_s == slow.spans.busy_s and fast.spans.dropped == slow.spans.dropped
    assert fast.makespan_s == slow.makespan_s
    assert fast.events == slow.events
    assert fast.link_busy_s == slow.link_busy_s == 0.0
    assert (fast.output_tokens, fast.prompt_tokens, fast.serving) == (slow.output_tokens, slow.prompt_tokens, slow.serving)
    assert fast.ttft_s.tobytes() == slow.ttft_s.tobytes() and fast.tpot_s.tobytes() == slow.tpot_s.tobytes()


@pytest.mark.parametrize(("path", "extra"), CASES)
def test_passes_that_move_no_rows_are_the_same_on_the_fast_path(path, extra, monkeypatch):
    scenario = load_scenario(path, [*SMALL, *extra])
    prepared = prepare(scenario, path)
    taken = []
    real_simulate = engine.simulate

    def spy(engine_, scheduler, planner, *args, **kwargs):
        taken.append(never_fetches(planner))
        return real_simulate(engine_, scheduler, planner, *args, **kwargs)

    for _, kwargs in passes(scenario)[1:]:  # the all-HBM baseline and the no-Engram reference
        monkeypatch.setattr(runner, "simulate", spy)
        fast = simulate_run(prepared, **kwargs)
        monkeypatch.setattr(runner, "simulate", partial(real_simulate, fast=False))
        slow = simulate_run(prepared, **kwargs)
        _assert_identical(fast, slow)
    assert taken == [True, True], "the references should take the fast path"


def test_a_pass_that_fetches_takes_the_event_path():
    scenario = load_scenario(QUICKSTART, SMALL)
    prepared = prepare(scenario, QUICKSTART)
    from engramsim.session import planner

    assert not never_fetches(planner(prepared))
    assert never_fetches(planner(prepared, engram=False))
    assert simulate_run(prepared).link_busy_s > 0

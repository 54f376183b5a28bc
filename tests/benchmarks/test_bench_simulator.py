"""Simulator speed and memory on the paper-4B scenario. A pass on the bulk path (simulator/bulk.py),
its schedule served and priced before (as the run's later passes and a sweep's later points find
it) and served and priced anew, against today's engine path: the event model driven by the
scheduler itself, step by step. The engine path's own cost per event is also printed against
bare SimPy running as many events in the same process, and a run's three passes on each path."""

import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import pytest
import simpy

import engramsim.runner as runner
from engramsim.records import RunOutcome
from engramsim.runner import passes, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import Prepared, prepare
from engramsim.simulator.engine import simulate


def _peak_rss_of_one_simulation_mb() -> float:
    """Peak RSS (VmHWM) of a fresh process that prepares and simulates paper-4B. Not ru_maxrss:
    that survives fork+exec, so it would report the test run's own peak."""
    code = (
        "from engramsim.runner import simulate_run; from engramsim.session import prepare; from engramsim.scenario_io import load_scenario; "
        "p = 'scenarios/paper-table4-4b.yaml'; simulate_run(prepare(load_scenario(p), p)); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; print(int(hwm.split()[1]) / 1024)"
    )
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1])


def _bare_simpy(events: int) -> float:
    """Wall seconds of a SimPy process that only schedules `events` timeouts: the floor any
    SimPy model with that many events pays."""
    env = simpy.Environment()

    def tick():
        for _ in range(events):
            yield env.timeout(1e-3)

    env.process(tick())
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def prepared():
    return prepare(load_scenario("scenarios/paper-table4-4b.yaml"), "scenarios/paper-table4-4b.yaml")


def _engine_path(prepared: Prepared, **kwargs) -> RunOutcome:
    """A pass as the engine ran it before schedules and the bulk path: the scheduler itself driving the event model."""
    original = Prepared.served
    Prepared.served = Prepared.scheduler  # type: ignore[method-assign]
    try:
        with_events = runner.simulate
        runner.simulate = partial(simulate, fast=False)
        try:
            return simulate_run(prepared, **kwargs)
        finally:
            runner.simulate = with_events
    finally:
        Prepared.served = original  # type: ignore[method-assign]


def _anew(prepared: Prepared) -> RunOutcome:
    """A bulk pass whose schedule is served and priced anew (the workload's lookups stay memoized)."""
    prepared.workload.schedules.clear()
    return simulate_run(prepared)


def _best(run: Callable[[], RunOutcome], rounds: int) -> tuple[float, list[float], RunOutcome]:
    """(the fastest wall seconds, every round's, the last outcome) of `rounds` runs."""
    times, outcome = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        outcome = run()
        times.append(time.perf_counter() - start)
    assert outcome is not None
    return min(times), times, outcome


@pytest.mark.benchmark(group="simulator-paper-4b")
def test_simulation_speed_paper_4b(benchmark, compare, prepared):
    start = time.perf_counter()
    cold = simulate_run(prepared)  # the first pass also hashes every step's lookups (memoized for the others)
    cold_s = time.perf_counter() - start
    outcome = benchmark.pedantic(simulate_run, args=(prepared,), rounds=7)
    warm_s, warm_all = benchmark.stats.stats.min, benchmark.stats.stats.data
    anew_s, anew_all, anew = _best(lambda: _anew(prepared), 5)
    engine_s, engine_all, engine = _best(lambda: _engine_path(prepared), 3)
    simulated = outcome.makespan_s
    bare_s = min(_bare_simpy(outcome.events) for _ in range(3))
    peak_rss_mb = _peak_rss_of_one_simulation_mb()

    def spread(times: list[float]) -> str:
        return f"{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f} ms over {len(times)}"

    benchmark.extra_info.update(simulated_s=simulated, events=outcome.events, warm_speedup=simulated / warm_s, anew_speedup=simulated / anew_s,
                                engine_speedup=simulated / engine_s, cold_speedup=simulated / cold_s, bare_simpy_s=bare_s, peak_rss_mb=peak_rss_mb)
    compare(f"paper-4B: {len(outcome.steps):,} steps, {simulated:.2f} simulated s, {outcome.events:,} events, peak RSS {peak_rss_mb:.0f} MB "
            "(target: a pass at >= 1,500x real time, aim 3,000x; <= 1024 MB)",
            ours=f"bulk path, schedule served and priced before: {warm_s * 1e3:.1f} ms = {simulated / warm_s:,.0f}x real time "
                 f"({spread(warm_all)}); schedule served and priced anew: {anew_s * 1e3:.1f} ms = {simulated / anew_s:,.0f}x "
                 f"({spread(anew_all)}); the first pass, hashing every lookup: {cold_s:.2f} s = {simulated / cold_s:.0f}x",
            baseline=f"engine path (the scheduler driving the event model): {engine_s * 1e3:.0f} ms = {simulated / engine_s:.0f}x "
                     f"({spread(engine_all)}), {engine_s / bare_s:.0f}x bare SimPy scheduling as many events ({bare_s * 1e3:.1f} ms)",
            ratio=engine_s / warm_s)
    for other in (cold, anew, engine):
        assert other.makespan_s == simulated and other.events == outcome.events
    assert engine_s / bare_s <= 60, "per-step Python (plan, skeleton, cost model) has grown far past the event loop"
    assert engine_s / warm_s >= 5, "the bulk path should be far faster than the engine path"
    assert peak_rss_mb <= 1024


def _three_passes(prepared, rounds: int = 3):
    """(the fastest of `rounds` wall seconds of each pass, their outcomes), every pass of a run in order."""
    best, outcomes = [], []
    for _, kwargs in passes(prepared.scenario):
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            outcome = simulate_run(prepared, **kwargs)
            times.append(time.perf_counter() - start)
        best.append(min(times))
        outcomes.append(outcome)
    return best, outcomes


@pytest.mark.benchmark(group="simulator-paper-4b")
def test_three_passes_bulk_path_vs_step_by_step_vs_event_model_paper_4b(benchmark, compare, prepared, monkeypatch):
    simulate_run(prepared)  # warm: every step's lookups memoized
    with monkeypatch.context() as forced:
        forced.setattr(runner, "simulate", partial(simulate, fast=False))
        event_s, event = _three_passes(prepared)
    with monkeypatch.context() as forced:
        forced.setattr(runner, "simulate", partial(simulate, bulk=False))
        fast_s, fast = _three_passes(prepared)
    bulk_s, bulk = _three_passes(prepared)
    benchmark.pedantic(lambda: [simulate_run(prepared, **kwargs) for _, kwargs in passes(prepared.scenario)], rounds=1)
    labels = [label for label, _ in passes(prepared.scenario)]
    simulated = [outcome.makespan_s for outcome in bulk]

    def side(seconds):
        each = ", ".join(f"{label} {s * 1e3:.1f} ms = {m / s:,.0f}x" for label, s, m in zip(labels, seconds, simulated, strict=True))
        return f"{each}; three passes {sum(seconds) * 1e3:.0f} ms = {sum(simulated) / sum(seconds):,.0f}x real time"
    benchmark.extra_info.update(event_path_s=event_s, fast_path_s=fast_s, bulk_path_s=bulk_s)
    compare(f"paper-4B, a run's three passes ({len(bulk[0].steps):,} steps each, the run's schedule served and priced once)",
            ours=f"bulk path: {side(bulk_s)}", baseline=f"event model for every pass: {side(event_s)}; fast path step by step: {side(fast_s)}",
            ratio=sum(event_s) / sum(bulk_s))
    for a, b, c in zip(bulk, fast, event, strict=True):
        assert a.makespan_s == b.makespan_s == c.makespan_s and a.events == b.events == c.events and list(a.spans) == list(c.spans)

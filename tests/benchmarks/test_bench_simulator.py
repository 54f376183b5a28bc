"""Simulator speed and memory on the paper-4B scenario, against bare SimPy running the same number
of events in the same process: the engine's own cost per event, whatever the machine's speed. The
simulated seconds per wall second are printed beside it; so are a run's three passes through the
event model against the fast path the passes that move no rows take (simulator/fast.py)."""

import subprocess
import sys
import time
from functools import partial

import pytest
import simpy

import engramsim.runner as runner
from engramsim.runner import passes, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare
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


@pytest.mark.benchmark(group="simulator-paper-4b")
def test_simulation_speed_paper_4b(benchmark, compare, prepared):
    start = time.perf_counter()
    cold = simulate_run(prepared)  # first pass also computes and memoizes every step's lookups
    cold_s = time.perf_counter() - start
    outcome = benchmark.pedantic(simulate_run, args=(prepared,), rounds=3)
    warm_s = benchmark.stats.stats.min
    simulated = outcome.makespan_s
    bare_s = min(_bare_simpy(outcome.events) for _ in range(3))
    peak_rss_mb = _peak_rss_of_one_simulation_mb()
    benchmark.extra_info.update(simulated_s=simulated, events=outcome.events, cold_speedup=simulated / cold_s,
                                warm_speedup=simulated / warm_s, bare_simpy_s=bare_s, peak_rss_mb=peak_rss_mb)
    compare(f"paper-4B: {len(outcome.steps):,} steps, {simulated:.2f} simulated s, {outcome.events:,} events, peak RSS {peak_rss_mb:.0f} MB "
            "(targets: <= 60x the bare loop, <= 1024 MB)",
            ours=f"engine, warm pass {warm_s:.3f} s = {simulated / warm_s:.0f}x real time (cold pass {cold_s:.3f} s = "
                 f"{simulated / cold_s:.0f}x): {warm_s / bare_s:.0f}x the bare loop, "
                 f"{(warm_s - bare_s) / len(outcome.steps) * 1e6:.0f} us of planning and pricing per step",
            baseline=f"bare SimPy scheduling as many events {bare_s * 1e3:.1f} ms")
    assert cold.makespan_s == pytest.approx(simulated)
    assert warm_s / bare_s <= 60, "per-step Python (plan, skeleton, cost model) has grown far past the event loop"
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
def test_three_passes_event_path_vs_fast_path_paper_4b(benchmark, compare, prepared, monkeypatch):
    simulate_run(prepared)  # warm: every step's lookups memoized
    with monkeypatch.context() as forced:
        forced.setattr(runner, "simulate", partial(simulate, fast=False))
        event_s, event = _three_passes(prepared)
    fast_s, fast = _three_passes(prepared)
    benchmark.pedantic(lambda: [simulate_run(prepared, **kwargs) for _, kwargs in passes(prepared.scenario)], rounds=1)
    labels = [label for label, _ in passes(prepared.scenario)]
    simulated = [outcome.makespan_s for outcome in fast]

    def side(seconds):
        each = ", ".join(f"{label} {s * 1e3:.0f} ms = {m / s:.0f}x" for label, s, m in zip(labels, seconds, simulated, strict=True))
        return f"{each}; three passes {sum(seconds) * 1e3:.0f} ms = {sum(simulated) / sum(seconds):.0f}x real time"
    benchmark.extra_info.update(event_path_s=event_s, fast_path_s=fast_s, configured_speedup=simulated[0] / fast_s[0])
    compare(f"paper-4B, a run's three passes ({len(fast[0].steps):,} steps each; target: a pass at >= 1,500x real time, aim 3,000x)",
            ours=f"fast path for the passes that move no rows: {side(fast_s)}",
            baseline=f"event path for every pass: {side(event_s)}", ratio=sum(event_s) / sum(fast_s))
    for a, b in zip(fast, event, strict=True):
        assert a.makespan_s == b.makespan_s and a.events == b.events and list(a.spans) == list(b.spans)

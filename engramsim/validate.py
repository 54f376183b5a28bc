"""Validation: run scenarios for real and in the simulator on a calibrated profile, and compare.

It runs one scenario on both executors, so it sits above both. For each scenario the real backend
runs the offloaded pass `repeats` times on one session (tables allocated and warmed up once, no
baseline passes) and the simulator runs the same steps once, with the scenario's hardware replaced
by the profile under test. Every outcome goes through `results.summarize`; the metrics compared are
those engramsim/metrics.py marks `validated`. A real value is the median of its repetitions, with
their range beside it, so an error can be read against the machine's own noise; the error of each
metric is (sim - median real) / median real in percent.

Per-stage totals (one per span kind: host, blocks, Engram layers, head, stalls, gather, h2d,
zero-copy) come from the timelines, so a miss can be traced to the stage the model gets wrong;
`--timeline` draws the median repetition and the simulation side by side. The profile is
calibrated on micro-benchmarks only (`engramsim calibrate`), never on these scenarios.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from engramsim.errors import InputError
from engramsim.metrics import validated_metrics
from engramsim.records import RunOutcome, SpanKind, Timeline
from engramsim.results import summarize, timeline_events, trace_json
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import Prepared, prepare

METRICS = tuple(m.name for m in validated_metrics())
HEADLINE = "step_latency_ms_mean"  # the aggregate errors are over this metric; it picks the median repetition
SIDES = ("real", "sim")  # the two processes a scenario gets in the --timeline trace, in this order


def default_scenarios() -> list[Path]:
    """Every shipped validation scenario (scenarios/validation/*.yaml), sorted by name."""
    folder = resources.files("engramsim.scenarios").joinpath("validation")
    return sorted((Path(str(f)) for f in folder.iterdir() if f.name.endswith((".yaml", ".yml"))), key=lambda p: p.name)


def overrides(profile: str, backend: str) -> list[str]:
    """The `--set` items that put a scenario on the profile under test, offloaded pass only."""
    return [f"hardware.profile={json.dumps(profile)}", "hardware.link=null", f"run.backend={backend}", "run.baseline=false"]


def stage_totals_ms(outcome: RunOutcome) -> dict[str, float]:
    """Busy milliseconds per span kind, keyed by its value ("host", "blocks", ..., "zero-copy"):
    every span's, whether or not the timeline kept it."""
    return {kind.value: outcome.spans.busy_s[kind] * 1e3 for kind in SpanKind}


def error_pct(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real == 0:
        return None
    return (sim - real) / real * 100.0


@dataclass(frozen=True)
class Spread:
    """One real value over the repetitions: the median the error is counted against, and the range
    the machine's noise gave."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def spread_pct(self) -> float | None:
        """(max - min) / median in percent; None when the median is 0."""
        return (self.high - self.low) / self.median * 100.0 if self.median else None

    def as_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "median": self.median, "min": self.low, "max": self.high, "spread_pct": self.spread_pct}


def spreads(repetitions: Sequence[dict[str, float]]) -> dict[str, Spread]:
    """Per key, the spread of its values over the repetitions (each a dict with the same keys)."""
    return {key: Spread(tuple(rep[key] for rep in repetitions)) for key in repetitions[0]}


def median_repetition(values: Sequence[float]) -> int:
    """The index of the repetition whose value is the median (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


@dataclass
class ScenarioResult:
    """One scenario validated: the real repetitions' spreads, the simulated values, and the two
    timelines drawn by `--timeline` (the median repetition's and the simulation's)."""

    name: str
    path: str
    real: dict[str, Spread]
    sim: dict[str, float]
    stages_real: dict[str, Spread]
    stages_sim: dict[str, float]
    steps: int
    real_wall_s: float
    median_repetition: int
    timelines: dict[str, Timeline] = field(default_factory=dict, repr=False)

    @property
    def repeats(self) -> int:
        return len(self.real[HEADLINE].values)

    @property
    def error_pct(self) -> dict[str, float | None]:
        """Per validated metric, the simulation's error against the real median."""
        return {k: error_pct(self.sim[k], self.real[k].median) for k in self.sim}

    @property
    def stage_error_pct(self) -> dict[str, float | None]:
        return {k: error_pct(self.stages_sim[k], self.stages_real[k].median) for k in self.stages_sim}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "steps": self.steps, "repeats": self.repeats,
                "median_repetition": self.median_repetition, "real": {k: s.as_dict() for k, s in self.real.items()},
                "sim": self.sim, "error_pct": self.error_pct,
                "stages_ms": {"real": {k: s.as_dict() for k, s in self.stages_real.items()}, "sim": self.stages_sim},
                "stage_error_pct": self.stage_error_pct, "real_wall_s": self.real_wall_s}


def measure(prepared: Prepared, backend: str, repeats: int, progress_factory: Callable | None = None) -> list[RunOutcome]:
    """`repeats` measured offloaded passes on one real session (tables allocated and warmed up once).

    `progress_factory(label, total_tokens)` is a context manager yielding a pass's per-step
    callback (as `engramsim run` uses it); None runs silently.
    """
    from engramsim.backends.executor import RealSession

    outcomes = []
    with RealSession(prepared, backend) as session:
        for i in range(repeats):
            label = f"{prepared.scenario.name} ({backend}, run {i + 1}/{repeats})"
            bar = progress_factory(label, prepared.workload.total_output_tokens) if progress_factory else None
            with bar or contextlib.nullcontext() as advance:
                outcomes.append(session.run(progress=advance))
    return outcomes


def validate_scenario(path: Path, backend: str, profile: str, progress_factory: Callable | None = None,
                      sets: Sequence[str] = (), repeats: int = 3) -> ScenarioResult:
    """Run one scenario `repeats` times real and once simulated on `profile`; InputError for bad
    input (one line). `sets` are the user's `--set KEY.PATH=VALUE` items, applied before the
    profile's overrides; `progress_factory`: see `measure`."""
    scenario = load_scenario(path, [*sets, *overrides(profile, backend)])
    prepared = prepare(scenario, str(path))
    t0 = time.perf_counter()
    reals = measure(prepared, backend, repeats, progress_factory)
    wall = time.perf_counter() - t0
    sim = simulate_run(prepared)
    for real in reals:  # parity: both executors must see the same steps
        if len(real.steps) != len(sim.steps):
            raise RuntimeError(f"{path}: the real run took {len(real.steps)} steps, the simulation {len(sim.steps)}")
    link, seed = prepared.profile.link.h2d_gbps, scenario.run.seed
    real_m = [{k: float(s[k]) for k in METRICS} for s in (summarize(r, None, seed, link) for r in reals)]
    sim_s = summarize(sim, None, seed, link)
    middle = median_repetition([m[HEADLINE] for m in real_m])
    return ScenarioResult(
        name=scenario.name, path=str(path), real=spreads(real_m), sim={k: float(sim_s[k]) for k in METRICS},
        stages_real=spreads([stage_totals_ms(r) for r in reals]), stages_sim=stage_totals_ms(sim), steps=len(sim.steps),
        real_wall_s=wall, median_repetition=middle, timelines={"real": reals[middle].spans, "sim": sim.spans},
    )


def aggregate(results: Sequence[ScenarioResult], metric: str = HEADLINE) -> tuple[float | None, float | None]:
    """(median, max) of |error %| of `metric` over the scenarios."""
    errors = [abs(e) for r in results if (e := r.error_pct.get(metric)) is not None]
    if not errors:
        return None, None
    return float(statistics.median(errors)), float(max(errors))


def document(results: Sequence[ScenarioResult], backend: str, profile: str, repeats: int, warning: str | None = None,
             planned: int | None = None) -> dict[str, Any]:
    """The --json document: per scenario every repetition's real values with their median and
    spread, the simulated values, the errors against the median; and the aggregate mean-latency
    errors. `complete` says whether all `planned` scenarios are in (it is written after each one)."""
    median, worst = aggregate(results)
    return {
        "backend": backend,
        "profile": profile,
        "repeats": repeats,
        "complete": planned is None or len(results) == planned,
        "metric": HEADLINE,
        "scenarios": [r.as_dict() for r in results],
        "median_abs_error_pct": median,
        "max_abs_error_pct": worst,
        "profile_warning": warning,
    }


def comparison_trace(results: Sequence[ScenarioResult]) -> str:
    """One Chrome/Perfetto trace: per scenario two processes, "<scenario> real" (the median
    repetition) then "<scenario> sim", each with the run timeline's lanes as its threads, so the
    two runs line up lane by lane (`results.timeline_events`, one process each)."""
    events: list[dict[str, Any]] = []
    for k, result in enumerate(results):
        for j, side in enumerate(SIDES):
            pid = len(SIDES) * k + j + 1
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
            events += timeline_events(result.timelines[side], f"{result.name} {side}", pid)[0]
    return trace_json(events)


def load_checked_profile(profile: str):
    """The profile under test, loaded once up front so a missing or corrupt file fails before any run."""
    from engramsim.hardware.presets import load_profile

    try:
        return load_profile(profile)
    except InputError as exc:
        raise InputError(exc.source, exc.problem, field=exc.field or "--profile") from None

"""Validation: run scenarios for real and in the simulator on a calibrated profile, and compare.

It runs one scenario on both executors, so it sits above both. For each scenario the real backend
runs the offloaded pass (`runner.run_real`, no baseline passes) and the simulator runs the same
steps with the scenario's hardware replaced by the profile under test. Both outcomes go through
`results.summarize`; the metrics compared are those engramsim/metrics.py marks `validated`, and
the error of each is (sim - real) / real in percent.

Per-stage totals (one per span kind: host, blocks, Engram layers, head, stalls, gather, h2d,
zero-copy) come from the two timelines, so a miss can be traced to the stage the model gets
wrong. The profile is calibrated on micro-benchmarks only (`engramsim calibrate`), never on
these scenarios.
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
from engramsim.records import RunOutcome, SpanKind
from engramsim.results import summarize
from engramsim.runner import run_real, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare

METRICS = tuple(m.name for m in validated_metrics())
HEADLINE = "step_latency_ms_mean"  # the aggregate errors are over this metric


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


@dataclass
class ScenarioResult:
    name: str
    path: str
    real: dict[str, float]
    sim: dict[str, float]
    error_pct: dict[str, float | None]
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0
    real_wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "steps": self.steps, "real": self.real, "sim": self.sim,
                "error_pct": self.error_pct, "stages_ms": self.stages_ms, "real_wall_s": self.real_wall_s}


def validate_scenario(path: Path, backend: str, profile: str, progress_factory: Callable | None = None,
                      sets: Sequence[str] = ()) -> ScenarioResult:
    """Run one scenario real and simulated on `profile`; InputError for bad input (one line).

    `sets` are the user's `--set KEY.PATH=VALUE` items, applied before the profile's overrides.

    `progress_factory(label, total_tokens)` is a context manager yielding the real run's per-step
    callback (as `engramsim run` uses it); None runs silently.
    """
    scenario = load_scenario(path, [*sets, *overrides(profile, backend)])
    prepared = prepare(scenario, str(path))
    bar = progress_factory(f"{scenario.name} ({backend})", prepared.workload.total_output_tokens) if progress_factory else None
    t0 = time.perf_counter()
    with bar or contextlib.nullcontext() as advance:
        real = run_real(prepared, backend, progress=advance)
    wall = time.perf_counter() - t0
    sim = simulate_run(prepared)
    link = prepared.profile.link.h2d_gbps
    real_s = summarize(real, None, scenario.run.seed, link)
    sim_s = summarize(sim, None, scenario.run.seed, link)
    if len(real.steps) != len(sim.steps):  # parity: both executors must see the same steps
        raise RuntimeError(f"{path}: the real run took {len(real.steps)} steps, the simulation {len(sim.steps)}")
    real_m, sim_m = {k: float(real_s[k]) for k in METRICS}, {k: float(sim_s[k]) for k in METRICS}
    return ScenarioResult(
        name=scenario.name, path=str(path), real=real_m, sim=sim_m, error_pct={k: error_pct(sim_m[k], real_m[k]) for k in METRICS},
        stages_ms={"real": stage_totals_ms(real), "sim": stage_totals_ms(sim)}, steps=len(real.steps), real_wall_s=wall,
    )


def aggregate(results: Sequence[ScenarioResult], metric: str = HEADLINE) -> tuple[float | None, float | None]:
    """(median, max) of |error %| of `metric` over the scenarios."""
    errors = [abs(e) for r in results if (e := r.error_pct.get(metric)) is not None]
    if not errors:
        return None, None
    return float(statistics.median(errors)), float(max(errors))


def document(results: Sequence[ScenarioResult], backend: str, profile: str, warning: str | None = None) -> dict[str, Any]:
    """The --json document: per scenario real / sim / error_pct, and the aggregate mean-latency errors."""
    median, worst = aggregate(results)
    return {
        "backend": backend,
        "profile": profile,
        "metric": HEADLINE,
        "scenarios": [r.as_dict() for r in results],
        "median_abs_error_pct": median,
        "max_abs_error_pct": worst,
        "profile_warning": warning,
    }


def load_checked_profile(profile: str):
    """The profile under test, loaded once up front so a missing or corrupt file fails before any run."""
    from engramsim.hardware.presets import load_profile

    try:
        return load_profile(profile)
    except InputError as exc:
        raise InputError(exc.source, exc.problem, field=exc.field or "--profile") from None

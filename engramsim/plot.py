"""plot.png: a run's step latency over time, against the passes it is measured against.

Panels share the time axis of the offloaded pass: the step latency of each pass (offloaded, every
table in HBM, no Engram); the offloaded latency minus each reference's, step by step (steps matched
by index, `latency_minus_ms`), which shows what the top panel's overlapping lines hide;
and the Engram stall per step. Each step is drawn as a horizontal segment from its start to its
end, so the idle time between steps (requests yet to arrive) stays a gap, not a line across it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engramsim.files import atomic_path
from engramsim.records import RunOutcome


@dataclass(frozen=True)
class PlotLabels:
    title: str
    time_axis: str


def plot_labels(document: dict[str, Any]) -> PlotLabels:
    """The title (scenario, backend, hardware, strategies) and the time axis's label (simulated
    or measured seconds) of a results document."""
    scenario, hardware, backend = document["scenario"], document["hardware"], document["backend"]
    strategies = ", ".join(f"{kind} {_choice(choice)}" for kind, choice in scenario["strategies"].items())
    if backend == "cpu":  # measured here: the scenario's GPU and link played no part
        title = f"{scenario['name']} (cpu): measured on this machine's CPU, tables and fetches in host memory"
    else:
        title = f"{scenario['name']} ({backend}) on {hardware['name']}: {hardware['gpu']['name']}, {hardware['link']['name']}"
    return PlotLabels(title=f"{title}\n{textwrap.fill(strategies, 120)}",
                      time_axis="simulated time (s)" if backend == "sim" else "measured time (s)")


def _choice(choice: dict[str, Any]) -> str:
    params = ", ".join(f"{key}={value}" for key, value in choice.get("params", {}).items())
    return f"{choice['name']} ({params})" if params else choice["name"]


MAX_SEGMENTS = 20_000  # steps drawn one by one up to this many; a longer run is drawn as means of equal groups


@dataclass(frozen=True)
class Series:
    """What the plot reads of a pass, one entry a step, as columns (a run of millions of steps is
    read without building a record per step)."""

    index: np.ndarray
    kind: np.ndarray
    seqs: np.ndarray
    tokens: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    stall_s: np.ndarray

    @classmethod
    def of(cls, run: RunOutcome) -> Series:
        log = run.steps
        stall = [block.per_step("stall_s") for block in log.blocks()]
        index, kind, seqs, tokens, start_s, end_s = (log.step_column(name) for name in ("index", "kind", "seqs", "tokens", "start_s", "end_s"))
        return cls(index, kind, seqs, tokens, start_s, end_s, np.concatenate(stall) if stall else np.zeros(0))

    @property
    def latency_ms(self) -> np.ndarray:
        return (self.end_s - self.start_s) * 1e3


def step_series(starts: np.ndarray, ends: np.ndarray, values: np.ndarray,
                max_segments: int = MAX_SEGMENTS) -> tuple[np.ndarray, np.ndarray]:
    """x and y of a line drawing each step as a segment at its value from its start to its end;
    a NaN point breaks the line wherever a step starts after the previous one ended. Past
    `max_segments` steps, each segment is the mean of a group of consecutive steps (NaN values
    left out), from the group's first start to its last end."""
    starts, ends, values = (np.asarray(a, dtype=float) for a in (starts, ends, values))
    n = len(starts)
    if n > max_segments:
        group = -(-n // max_segments)
        firsts = np.arange(0, n, group)
        known = ~np.isnan(values)
        counts = np.add.reduceat(known.astype(float), firsts)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.add.reduceat(np.where(known, values, 0.0), firsts) / counts
        starts, ends = starts[firsts], ends[np.append(firsts[1:], n) - 1]
        n = len(starts)
    gap = np.zeros(n, dtype=bool)
    gap[1:] = starts[1:] > ends[:-1]
    keep = np.column_stack([gap, np.ones((n, 2), dtype=bool)]).ravel()
    nan = np.full(n, np.nan)
    x = np.column_stack([nan, starts, ends]).ravel()
    y = np.column_stack([nan, values, values]).ravel()
    return x[keep], y[keep]


def latency_minus_ms(outcome: Series, reference: Series) -> np.ndarray:
    """Per step of `outcome`, its latency minus that of the same step in `reference`, in ms: the
    step of the same index, where it did the same work (kind, sequences, tokens); NaN elsewhere.
    With timed arrivals a faster pass can admit a request a step earlier, and from there the two
    passes' steps at one index are different steps."""
    n = min(outcome.index.size, reference.index.size)  # a pass records its steps in index order from 0
    same = np.zeros(outcome.index.size, dtype=bool)
    same[:n] = ((outcome.index[:n] == reference.index[:n]) & (outcome.kind[:n] == reference.kind[:n])
                & (outcome.seqs[:n] == reference.seqs[:n]) & (outcome.tokens[:n] == reference.tokens[:n]))
    diff = np.full(outcome.index.size, np.nan)
    diff[same] = outcome.latency_ms[same] - reference.latency_ms[:n][same[:n]]
    return diff


def write_plot(path: Path, document: dict[str, Any], outcome: RunOutcome, baseline: RunOutcome | None,
               no_engram: RunOutcome | None) -> None:
    """plot.png, written atomically; the difference panel appears when a reference pass ran."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    labels = plot_labels(document)
    run = Series.of(outcome)
    references = [(label, Series.of(ref), color) for label, ref, color in
                  (("all tables in HBM", baseline, "tab:green"), ("no Engram", no_engram, "tab:gray")) if ref is not None]
    fig = Figure(figsize=(11, 8.5 if references else 6), layout="constrained")
    axes = fig.subplots(3 if references else 2, 1, sharex=True, height_ratios=[3, 2, 2] if references else [3, 2])
    fig.suptitle(labels.title, fontsize=10)

    def series(of: Series, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return step_series(of.start_s, of.end_s, values)

    grouped = f" (means of {-(-run.index.size // MAX_SEGMENTS)} steps)" if run.index.size > MAX_SEGMENTS else ""
    top = axes[0]
    for label, ref, color in references:
        top.plot(*series(ref, ref.latency_ms), lw=0.7, color=color, label=label)
    top.plot(*series(run, run.latency_ms), lw=0.7, color="tab:blue", label="offloaded")
    top.set_ylabel(f"step latency (ms){grouped}")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right", fontsize=8)

    if references:
        diff = axes[1]
        diff.axhline(0, color="black", lw=0.5)
        for label, ref, color in references:
            diff.plot(*series(run, latency_minus_ms(run, ref)), lw=0.7, color=color, label=f"offloaded minus {label}")
        diff.set_ylabel("latency difference (ms)")
        diff.legend(loc="upper right", fontsize=8)

    stall = axes[-1]
    stall_ms = run.stall_s * 1e3
    stall.plot(*series(run, stall_ms), lw=0.7, color="tab:red")
    if not stall_ms.any():
        stall.text(0.5, 0.5, "no step waited for Engram rows", transform=stall.transAxes, ha="center", va="center", color="gray")
    stall.set_ylabel("Engram stall per step (ms)")
    stall.set_ylim(bottom=0)
    stall.set_xlabel(labels.time_axis)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)

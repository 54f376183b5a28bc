"""`engramsim plot`'s figure: a metric against a key of a sweep (or compare) table, one line per hue.

Points that share an x and a hue (the other keys of the grid vary beneath them, or repeated
samples) are drawn as their median, with a band from their 5th to their 95th percentile. The x
axis is logarithmic when the x values are numbers, all positive, spanning more than two decades;
text values are placed in the order they first appear. Takes plain values, so it knows nothing of
sweeps, runs or metrics; drawn as compare.png is (matplotlib's Figure, no pyplot).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG_DECADES = 2.0  # a log x axis when max / min exceeds 10 ** LOG_DECADES
BAND = (5.0, 95.0)


@dataclass(frozen=True)
class Line:
    """One hue's line: per x (a number, or a position for text values), the median of its points
    and the band (5th and 95th percentiles), and how many points each x has."""

    label: str | None
    xs: list[float]
    median: list[float]
    low: list[float]
    high: list[float]
    counts: list[int]


def numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def use_log(xs: Sequence[float]) -> bool:
    """Numbers, all positive, spanning more than `LOG_DECADES` decades."""
    return numeric(xs) and min(xs) > 0 and max(xs) / min(xs) > 10.0 ** LOG_DECADES


def lines(points: Sequence[tuple[Any, Any, float]]) -> tuple[list[Line], list[str] | None]:
    """Group (x, hue, y) points into one `Line` per hue (in the order hues first appear) and,
    when the x values are not all numbers, the text of each x position (first appearance order)."""
    xs_all = [x for x, _, _ in points]
    ticks = None
    if numeric(xs_all):
        position = {x: float(x) for x in xs_all}
    else:
        ticks = list(dict.fromkeys(str(x) for x in xs_all))
        position = {x: float(ticks.index(str(x))) for x in xs_all}
    groups: dict[Any, dict[float, list[float]]] = {}
    for x, hue, y in points:
        groups.setdefault(hue, {}).setdefault(position[x], []).append(y)
    out = []
    for hue, by_x in groups.items():
        xs = sorted(by_x)
        ys = [np.asarray(by_x[x], dtype=float) for x in xs]
        out.append(Line(None if hue is None else str(hue), xs, [float(np.median(y)) for y in ys],
                        [float(np.percentile(y, BAND[0])) for y in ys], [float(np.percentile(y, BAND[1])) for y in ys],
                        [y.size for y in ys]))
    return out, ticks


def write_lines_plot(path: Path, title: str, xlabel: str, ylabel: str, drawn: Sequence[Line], ticks: Sequence[str] | None,
                     log_x: bool, hue: str | None = None) -> None:
    """Draw the figure into `path` (PNG; the caller writes it atomically)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for line in drawn:
        (handle,) = ax.plot(line.xs, line.median, marker="o", markersize=3.5, lw=1.2, label=line.label)
        if any(n > 1 for n in line.counts):
            ax.fill_between(line.xs, line.low, line.high, color=handle.get_color(), alpha=0.2, lw=0)
    if log_x:
        ax.set_xscale("log")
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if max(map(len, ticks), default=0) > 8 else 0,
                      ha="right" if max(map(len, ticks), default=0) > 8 else "center", fontsize=8)
    if any(line.label is not None for line in drawn):
        ax.legend(title=hue, fontsize=8, title_fontsize=8, loc="best")
    ax.set_title(textwrap.fill(title, 110), fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=110)

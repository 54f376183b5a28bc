"""compare.png: `engramsim compare`'s variants side by side.

On top, latency against a quality metric (or, when none varies, against HBM used or link bytes)
with each variant's number at its point and the Pareto front joined in red; beside it the list of
variants. Below, one bar panel per metric of the table, a bar per variant (none where a variant
does not fit or has no value). Takes plain numbers, so it knows nothing of runs or metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_LISTED = 40  # variants named beside the trade-off panel; the rest are in compare.csv
PANEL_COLUMNS = 4


@dataclass(frozen=True)
class Bars:
    """One bar panel: a value per variant (None: no bar)."""

    title: str
    indices: list[int]
    values: list[float | None]


@dataclass(frozen=True)
class Tradeoff:
    """Points of the variants that ran (their numbers, x and y) and the numbers on the Pareto front."""

    xlabel: str
    ylabel: str
    indices: list[int]
    xs: list[float]
    ys: list[float]
    front: list[int]
    title: str
    x_name: str = ""
    y_name: str = ""


def pareto_front(xs: Sequence[float], ys: Sequence[float], *, higher_x_better: bool = False,
                 higher_y_better: bool = False) -> list[int]:
    """Positions of the points no other point dominates (at least as good in both coordinates and
    better in one), lower being better unless said otherwise; ordered by x, then y. Equal points
    are all on the front."""
    sx, sy = (-1.0 if higher_x_better else 1.0), (-1.0 if higher_y_better else 1.0)
    pts = [(sx * x, sy * y) for x, y in zip(xs, ys, strict=True)]
    front = [i for i, (x, y) in enumerate(pts)
             if not any(ox <= x and oy <= y and (ox < x or oy < y) for ox, oy in pts)]
    return sorted(front, key=lambda i: (xs[i], ys[i]))


def write_compare_plot(path: Path, title: str, names: Sequence[str], bars: Sequence[Bars], tradeoff: Tradeoff | None) -> None:
    """Draw the figure into `path` (PNG; the caller writes it atomically)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    rows = max(1, math.ceil(len(bars) / PANEL_COLUMNS))
    fig = Figure(figsize=(14, 4.8 + 2.4 * rows), layout="constrained")
    fig.suptitle(title, fontsize=10)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.8, 2.4 * rows])  # type: ignore[misc]  # an array of two
    ax, listing = top.subplots(1, 2, width_ratios=[3, 2])
    if tradeoff is None or not tradeoff.indices:
        ax.text(0.5, 0.5, "no variant ran", transform=ax.transAxes, ha="center", va="center", color="gray")
    else:
        ax.scatter(tradeoff.xs, tradeoff.ys, color="tab:blue", zorder=2)
        labels: dict[tuple[str, str], tuple[float, float, list[str]]] = {}  # variants at one point (4 digits) share a label
        for n, x, y in zip(tradeoff.indices, tradeoff.xs, tradeoff.ys, strict=True):
            labels.setdefault((f"{x:.4g}", f"{y:.4g}"), (x, y, []))[2].append(str(n))
        for x, y, numbers in labels.values():
            ax.annotate(",".join(numbers), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        at = {n: (x, y) for n, x, y in zip(tradeoff.indices, tradeoff.xs, tradeoff.ys, strict=True)}
        fx, fy = zip(*(at[n] for n in tradeoff.front), strict=True) if tradeoff.front else ((), ())
        ax.plot(fx, fy, color="tab:red", marker="o", markerfacecolor="none", markersize=11, lw=1, zorder=3, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
        ax.set_title(tradeoff.title, fontsize=9)
        ax.set_xlabel(tradeoff.xlabel)
        ax.set_ylabel(tradeoff.ylabel)
        ax.grid(alpha=0.3)
    listing.axis("off")
    shown = list(names[:MAX_LISTED]) + ([f"... {len(names) - MAX_LISTED} more in compare.csv"] if len(names) > MAX_LISTED else [])
    listing.text(0, 1, "\n".join(shown), transform=listing.transAxes, va="top", ha="left", fontsize=7, family="monospace")
    panels = bottom.subplots(rows, PANEL_COLUMNS, squeeze=False)
    for panel, spec in zip(panels.ravel(), bars, strict=False):
        xs = list(range(len(spec.indices)))
        heights = [0.0 if v is None else v for v in spec.values]
        drawn = panel.bar(xs, heights, color=["tab:blue" if v is not None else "none" for v in spec.values])
        for bar, v in zip(drawn, spec.values, strict=True):
            if v is None:
                panel.text(bar.get_x() + bar.get_width() / 2, 0, "x", ha="center", va="bottom", color="gray", fontsize=8)
        panel.set_xticks(xs, [str(n) for n in spec.indices], fontsize=7)
        panel.set_title(spec.title, fontsize=8)
        panel.tick_params(axis="y", labelsize=7)
        if all(v is None or v >= 0 for v in spec.values):
            panel.set_ylim(bottom=0, top=None if any(spec.values) else 1)
    for panel in panels.ravel()[len(bars):]:
        panel.axis("off")
    fig.savefig(path, format="png", dpi=100)

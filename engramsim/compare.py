"""`engramsim compare`: variants of one scenario, each simulated on the same requests, side by side.

A variant is one combination of the `--vary KEY.PATH=V1,V2,...` values, applied as `--set`
overrides after the common `--set`s (engramsim/variants.py). Every variant runs what `engramsim run` runs
(`runner.passes`: offloaded, all-HBM baseline, no-Engram reference, each `runner.simulate_run`)
and is summarised by the same metric registry (`results.summarize`, `runner.hbm_report`), so its
summary is what `engramsim run` with those `--set`s writes in results.json. Same seed, same
requests: variants that change only how rows travel run the same steps; variants that change what
HBM holds change the KV cache and may batch differently. compare.json records a digest of each
variant's requests and of its step schedule, so either shows.

A variant its hardware cannot run (`session.prepare` refuses it: the KV cache, HBM, host DRAM, a
tier) is kept as "does not fit: <reason>", never dropped.

With `--backend cpu|cuda` every variant runs the passes `engramsim run --backend cpu|cuda` runs
(`runner.real_passes`, or `runner.run_real_report` with --keep-runs), one variant after another,
each on its own `RealSession` (variants may differ in table sizes and placement). Before any runs,
every variant is prepared and its real run estimated (`estimate.estimate_real_run`); one the real
backend refuses (its session layout: a tier, transport or prefetch mode it does not run; this
machine's memory) is kept as "refused by the real backend: <reason>", and a comparison estimated
to take longer than `estimate.MAX_WALL_S` in all needs --yes (or a yes on a terminal), as `run` does.
Its values are measured, so compare.json says `measured: true` and the same inputs give the
same bytes only on the simulated backend. Bad input for the command (a malformed
`--vary`, an unknown key, a value the schema refuses) is one `InputError` line before any work.

The table's columns are lists of metric names per group, taken from the registry and skipping
names it lacks; every metric whose name holds "speculative" joins the speculation group, and every
metric registered with group "quality" (or a true `quality` attribute) is a quality column and
the latency plot's x axis (lower is better unless it has a true `higher_is_better` attribute).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engramsim import __version__
from engramsim.compare_plot import Bars, Tradeoff, pareto_front, write_compare_plot
from engramsim.errors import InputError
from engramsim.files import atomic_path, write_text_atomic
from engramsim.metrics import Metric, registered
from engramsim.records import RunOutcome
from engramsim.results import results_json
from engramsim.runner import (
    RunReport,
    hbm_report,
    real_passes,
    run_passes,
    run_real_report,
    run_sim,
    simulate_run,
    summarize_passes,
)
from engramsim.scenario import Scenario
from engramsim.scenario_io import dump_scenario
from engramsim.session import GIB, Prepared, prepare
from engramsim.variants import Variant, Vary

SCHEMA_VERSION = 1
FITS, DOES_NOT_FIT, REFUSED = "ok", "does not fit", "refused by the real backend"
SIM = "sim"
FILES = ("compare.json", "compare.csv", "compare.png")
MIB = 1 << 20


# ---- running -----------------------------------------------------------------------------------
@dataclass
class Result:
    """One variant's outcome: its summary metrics and HBM report, or why it does not fit (or the
    real backend refuses it)."""

    variant: Variant
    scenario: Scenario
    status: str = FITS
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    hbm: dict[str, Any] = field(default_factory=dict)
    workload: str | None = None  # digest of the requests (arrival, lengths, trace offsets)
    schedule: str | None = None  # digest of the offloaded pass's steps (kind, sequences, tokens)
    run_dir: str | None = None  # relative to the compare folder, with --keep-runs

    @property
    def fits(self) -> bool:
        return self.status == FITS


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def _reason(exc: InputError) -> str:
    return f"{exc.field}: {exc.problem}" if exc.field else exc.problem


ProgressFactory = Callable[[str, int], Any]  # (label, total tokens) -> context manager yielding an advance callback


def run_variant(variant: Variant, scenario: Scenario, source: str, keep: Path | None = None,
                progress: ProgressFactory | None = None) -> Result:
    """Prepare and simulate one variant: every pass `engramsim run` makes; with `keep`, its whole run
    folder there (`runner.run_sim`). An `InputError` while preparing is "does not fit"."""
    try:
        prepared = prepare(scenario, source)
    except InputError as exc:
        return Result(variant, scenario, status=DOES_NOT_FIT, reason=_reason(exc))
    return _ran(variant, prepared, keep, lambda out: run_sim(prepared, out, progress),
                lambda: run_passes(prepared, partial(simulate_run, prepared), progress))


def _ran(variant: Variant, prepared: Prepared, keep: Path | None, report: Callable[[Path], RunReport],
         outcomes: Callable[[], list[RunOutcome]]) -> Result:
    """The variant's passes: with `keep`, `report(keep)` writes its run folder there; else only
    `outcomes()` runs, summarised as the run would."""
    if keep is not None:
        written = report(keep)
        summary, hbm, outcome = written.document["summary"], written.document["hbm"], written.outcome
    else:
        passes = outcomes()
        summary, hbm, outcome = summarize_passes(prepared, passes), hbm_report(prepared), passes[0]
    requests = prepared.workload.requests
    return Result(variant, prepared.scenario, summary=summary, hbm=hbm,
                  workload=_digest(requests.arrival_s, requests.prompt_len, requests.output_len, requests.trace_start),
                  schedule=_digest(*(outcome.steps.step_column(name) for name in ("kind", "seqs", "tokens"))))


Ready = Prepared | Result  # a variant prepared for a real backend, or why it will not run there


def prepare_real(loaded: Sequence[tuple[Variant, Scenario]], source: str, backend: str, yes: bool,
                 ask: Callable[[str], bool] | None = None) -> tuple[list[Ready], str]:
    """Every variant prepared and its real run estimated, before any runs: `prepare` refusing is
    "does not fit" (as simulated), the real backend refusing (`SessionLayout`, this machine's
    memory: `estimate.check_real_memory`) is "refused by the real backend". Returns them and the
    estimate's line; InputError when the whole comparison is estimated to take longer than
    MAX_WALL_S and neither `yes` nor `ask(line)` says to go ahead (`estimate.preflight_real`'s rule)."""
    from engramsim.estimate import MAX_WALL_S, check_real_memory, estimate_real_run

    out: list[Ready] = []
    wall = 0.0
    for variant, scenario in loaded:
        try:
            prepared = prepare(scenario, source)
        except InputError as exc:
            out.append(Result(variant, scenario, status=DOES_NOT_FIT, reason=_reason(exc)))
            continue
        try:
            estimate = estimate_real_run(prepared, backend)
            check_real_memory(prepared, estimate)
        except InputError as exc:
            out.append(Result(variant, scenario, status=REFUSED, reason=_reason(exc)))
            continue
        wall += estimate.wall_s
        out.append(prepared)
    runs = sum(isinstance(r, Prepared) for r in out)
    name = loaded[0][1].name if loaded else "?"
    took = f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.0f} min"
    text = f"{backend} comparison of {name!r}: {runs} of {len(out)} variants run, ~{took} wall estimated"
    if wall > MAX_WALL_S and not yes and not (ask and ask(text)):
        raise InputError(source, f"{text}; that is over {MAX_WALL_S / 60:.0f} min: pass --yes to run it anyway")
    return out, text


def run_real_variant(variant: Variant, prepared: Prepared, backend: str, keep: Path | None = None,
                     progress: ProgressFactory | None = None, setup_progress: ProgressFactory | None = None) -> Result:
    """Every pass `engramsim run --backend cpu|cuda` makes, on a session of this variant's own;
    with `keep`, its whole run folder there (`runner.run_real_report`). An `InputError` from the
    session (its layout, the device's memory) is "refused by the real backend"."""
    try:
        return _ran(variant, prepared, keep, lambda out: run_real_report(prepared, backend, out, progress, setup_progress),
                    lambda: real_passes(prepared, backend, progress, setup_progress)[0])
    except InputError as exc:
        return Result(variant, prepared.scenario, status=REFUSED, reason=_reason(exc))


# ---- columns: the table, the CSV's derived values and the plot's panels ----------------------------
HEADLINE: tuple[tuple[str, tuple[str, ...]], ...] = (  # (group, metric names); names the registry lacks are skipped
    ("throughput", ("throughput_tok_s",)),
    ("overhead", ("overhead_pct", "overhead_vs_no_engram_pct")),
    ("latency", ("tpot_ms_p50", "tpot_ms_p99")),
    ("stall", ("engram_stall_ms_total",)),
    ("link", ("pcie_bytes",)),
    ("cache", ("cache_hit_rate",)),
    ("speculation", ("rows_speculative",)),
)
SHORT = {"throughput_tok_s": "throughput", "overhead_pct": "vs all-HBM", "overhead_vs_no_engram_pct": "vs no Engram",
         "engram_stall_ms_total": "stall", "pcie_bytes": "link", "cache_hit_rate": "hit rate", "rows_speculative": "speculative",
         "step_latency_ms_mean": "step latency mean"}
DISPLAY = {"fraction": ("%", 100.0, 1)}  # metric unit -> (shown unit, scale, digits)
BYTES = (("GB", 1e9, 3), ("MB", 1e6, 2), ("kB", 1e3, 1))  # bytes are shown in the largest unit the biggest value reaches


@dataclass(frozen=True)
class Column:
    """One column of the table and one bar panel of the plot: `value` in the shown unit."""

    name: str  # the metric's name, or the compare.csv column of a derived value
    header: str
    unit: str
    digits: int
    value: Callable[[Result], float | int | None]
    higher_is_better: bool = False

    def text(self, result: Result) -> str:
        value = self.value(result)
        if value is None:
            return "-"
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value if abs(value) >= 0.5 * 10.0 ** -self.digits else 0.0:,.{self.digits}f}"  # no "-0.000"

    @property
    def title(self) -> str:
        return f"{self.header} ({self.unit})" if self.unit else self.header


def is_quality(metric: Metric) -> bool:
    return metric.group == "quality" or bool(getattr(metric, "quality", False))


def _display(metric: Metric, results: Sequence[Result]) -> tuple[str, float, int]:
    """(shown unit, factor, digits) of a metric's column."""
    if metric.unit == "bytes":
        largest = max((abs(v) for r in results if isinstance(v := r.summary.get(metric.name), int | float)), default=0)
        return next(((unit, 1 / size, digits) for unit, size, digits in BYTES if largest >= size), ("bytes", 1.0, 0))
    return DISPLAY.get(metric.unit, (metric.unit, 1.0, metric.digits))


def metric_column(metric: Metric, results: Sequence[Result] = ()) -> Column:
    """The column of a registered metric, in the unit `results` read best in."""
    unit, scale, digits = _display(metric, results)

    def value(result: Result) -> float | int | None:
        v = result.summary.get(metric.name)
        if v is None or isinstance(v, bool):
            return None
        return v if scale == 1.0 else v * scale

    higher = bool(getattr(metric, "higher_is_better", metric.name in ("throughput_tok_s", "cache_hit_rate")))
    return Column(metric.name, SHORT.get(metric.name, metric.label), unit, digits, value, higher)


def hbm_used_bytes(hbm: dict[str, Any]) -> int:
    """What the configured pass keeps in HBM besides the KV cache."""
    return sum(hbm["items_bytes"].values())


def engram_hbm_bytes(hbm: dict[str, Any]) -> int:
    """The part of it that is Engram's (hbm.py names those items "Engram ...")."""
    return sum(size for item, size in hbm["items_bytes"].items() if item.startswith("Engram"))


HBM_COLUMNS = (
    Column("hbm_used_bytes", "HBM used", "GiB", 2, lambda r: hbm_used_bytes(r.hbm) / GIB if r.hbm else None),
    Column("engram_hbm_bytes", "Engram HBM", "MiB", 1, lambda r: engram_hbm_bytes(r.hbm) / MIB if r.hbm else None),
    Column("kv_tokens", "KV capacity", "tokens", 0, lambda r: int(r.hbm["kv_blocks"] * r.hbm["kv_block_size"]) if r.hbm else None,
           higher_is_better=True),
)


def quality_metrics() -> list[Metric]:
    return [m for m in registered().values() if is_quality(m)]


def columns(results: Sequence[Result]) -> list[Column]:
    """The table's columns: the headline groups, every speculation and quality metric in the
    registry, then HBM used and the KV cache it left; a column no variant has a value for is left out."""
    metrics = registered()
    names = [name for _, group in HEADLINE for name in group if name in metrics]
    names += [name for name in metrics if "speculative" in name and name not in names]
    names += [m.name for m in quality_metrics() if m.name not in names]
    out = [metric_column(metrics[name], results) for name in names] + list(HBM_COLUMNS)
    return [c for c in out if any(c.value(r) is not None for r in results if r.fits)]


def tradeoff(results: Sequence[Result]) -> Tradeoff | None:
    """Latency (TPOT p50, else the mean step latency) against the first quality metric that varies,
    else against HBM used or link bytes, whichever varies (the title says so), with its Pareto front."""
    metrics = registered()
    ok = [r for r in results if r.fits]
    if not ok:
        return None
    y = next((metric_column(metrics[name], ok) for name in ("tpot_ms_p50", "step_latency_ms_mean")
              if name in metrics and any(r.summary.get(name) for r in ok)), None)
    if y is None:
        return None

    def varies(c: Column) -> bool:
        return len({c.value(r) for r in ok if c.value(r) is not None}) > 1

    quality = [metric_column(m, ok) for m in quality_metrics()]
    x = next((c for c in quality if varies(c)), None)
    note = ""
    if x is None:
        fallback = [HBM_COLUMNS[0]] + ([metric_column(metrics["pcie_bytes"], ok)] if "pcie_bytes" in metrics else [])
        x = next((c for c in fallback if varies(c)), fallback[-1])
        note = f" ({'no quality metric varies' if quality else 'no quality metric in the registry'})"
    points = [(r.variant.index, float(px), float(py)) for r in ok if (px := x.value(r)) is not None and (py := y.value(r)) is not None]
    xs, ys = [px for _, px, _ in points], [py for _, _, py in points]
    front = pareto_front(xs, ys, higher_x_better=x.higher_is_better, higher_y_better=y.higher_is_better)
    return Tradeoff(x.title, y.title, [n for n, _, _ in points], xs, ys, [points[i][0] for i in front],
                    f"{y.title} against {x.title}{note}; Pareto front in red", x.name, y.name)


# ---- compare.json, compare.csv, compare.png ----------------------------------------------------
def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def compare_document(source: str, sets: Sequence[str], varies: Sequence[Vary], results: Sequence[Result],
                     backend: str = SIM) -> dict[str, Any]:
    """compare.json: the inputs, then every variant (overrides, status and reason, summary metrics,
    HBM report, digests of its requests and steps, resolved scenario) and the plotted trade-off.
    No wall-clock values: simulated, the same inputs give the same bytes; on a real backend the
    summaries are measured (`measured: true`), so they differ from run to run."""
    trade = tradeoff(results)
    measured = {} if backend == SIM else {"measured": True}
    return measured | {
        "schema_version": SCHEMA_VERSION, "engramsim_version": __version__, "backend": backend,
        "scenario": results[0].scenario.name if results else None, "source": source, "set": list(sets),
        "vary": [{"key": v.key, "values": _jsonable(list(v.values))} for v in varies],
        "variants": [{
            "index": r.variant.index, "name": r.variant.name,
            "overrides": {key: _jsonable(value) for key, _, value in r.variant.overrides},
            "status": r.status, "reason": r.reason, "summary": r.summary or None, "hbm": r.hbm or None,
            "workload_sha256": r.workload, "schedule_sha256": r.schedule, "run_dir": r.run_dir,
            "scenario": dump_scenario(r.scenario),
        } for r in results],
        "tradeoff": None if trade is None else {"x": trade.x_name, "y": trade.y_name, "pareto_front": trade.front,
                                                "title": trade.title},
    }


def _cell(value: Any) -> Any:
    return "" if value is None else value


def compare_csv(varies: Sequence[Vary], results: Sequence[Result]) -> str:
    """compare.csv: one row per variant: its --vary values as given, status, reason, every summary
    metric in the registry's order, HBM used, Engram's part of it, the KV cache (tokens, blocks,
    bytes) and the digests."""
    names = list(registered())
    hbm_keys = ("kv_blocks", "kv_block_size", "kv_bytes", "kv_blocks_without_engram")
    header = ["index", "name", *(v.key for v in varies), "status", "reason", *names, "hbm_used_bytes", "engram_hbm_bytes",
              "kv_tokens", *hbm_keys, "workload_sha256", "schedule_sha256"]
    rows: list[list[Any]] = [header]
    for r in results:
        hbm = ([hbm_used_bytes(r.hbm), engram_hbm_bytes(r.hbm), r.hbm["kv_blocks"] * r.hbm["kv_block_size"], *(r.hbm[k] for k in hbm_keys)]
               if r.hbm else [None] * (3 + len(hbm_keys)))
        rows.append([r.variant.index, r.variant.name, *(text for _, text, _ in r.variant.overrides), r.status, r.reason,
                     *(r.summary.get(name) for name in names), *hbm, r.workload, r.schedule])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[_cell(v) for v in row] for row in rows])
    return buf.getvalue()


def how(backend: str) -> str:
    """How the values were had: "simulated on" (a profile follows) or measured on a real backend."""
    return "simulated on" if backend == SIM else f"measured on {backend}, profile"


def _hardware(results: Sequence[Result]) -> str:
    choices = {(r.scenario.hardware.profile, r.scenario.hardware.link) for r in results}
    if len(choices) != 1:
        return "varying hardware"
    profile, link = choices.pop()
    return profile + (f" with {link}" if link else "")


def write_compare(folder: Path, source: str, sets: Sequence[str], varies: Sequence[Vary], results: Sequence[Result],
                  backend: str = SIM) -> list[Path]:
    """compare.json, compare.csv and compare.png in `folder`, each written atomically."""
    paths = [folder / name for name in FILES]
    document = compare_document(source, sets, varies, results, backend)
    write_text_atomic(paths[0], results_json(document, paths[0]))  # standard JSON only, sorted keys
    write_text_atomic(paths[1], compare_csv(varies, results))
    cols = columns(results)
    title = f"{document['scenario']}: {len(results)} variants of {', '.join(v.key for v in varies)} ({how(backend)} {_hardware(results)})"
    names = [f"{r.variant.index}  {r.variant.name}" + ("" if r.fits else f"  ({r.status})") for r in results]
    bars = [Bars(c.title, [r.variant.index for r in results], [None if (v := c.value(r)) is None else float(v) for r in results])
            for c in cols]
    with atomic_path(paths[2]) as tmp:
        write_compare_plot(tmp, title, names, bars, tradeoff(results))
    return paths

"""The summary metrics of a run, each declared once: results.json's `summary`, the `engramsim run`
report, `engramsim diff`, `engramsim validate` and the README's Results table all read this registry.

Adding a metric is one `register(Metric(...))` call here (or in a plugin): `compute` derives it from
a `MetricContext`, and every output picks it up. The README table is generated, not hand-written:
`python -m engramsim.metrics` prints it for the "## Results" section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from engramsim.records import LAYER_FIELDS, RunOutcome, ServingCounts, StepLog, StepRecord

GROUPS = ("throughput", "overheads", "latencies", "stall", "link traffic", "rows", "quality", "serving", "run size")
LAYER_COUNTS = ("rows_unique", "references", "rows_hbm", "rows_fetched", "bytes_fetched")
SPLIT_COUNTS = ("rows_placed_hbm", "cache_hits", "rows_missed", "rows_speculative", "rows_staged", "rows_waiting")

Value = int | float | None


def quantiles_ms(values: np.ndarray) -> dict[str, float]:
    """Mean, median and p99 in milliseconds of values in seconds (zeros when there are none)."""
    if values.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    ms = values * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def per_layer(steps: Iterable[StepRecord]) -> list[dict[str, Any]]:
    """results.json's `per_layer`: stalls, fetch times and row counts per Engram layer, by layer id.
    Times are summed one record at a time in step order, so a total never depends on how the
    records are stored."""
    log = StepLog.of(steps)
    ids = log.layer_column("layer")
    issue_s, ready_s, stall_s = (log.layer_column(name) for name in ("issue_s", "ready_s", "stall_s"))
    counts = {key: log.layer_column(key) for key in LAYER_COUNTS + SPLIT_COUNTS}
    layers = []
    for layer in np.unique(ids).tolist():
        mine = ids == layer
        fetch_ms = (ready_s[mine] - issue_s[mine]) * 1e3
        acc: dict[str, Any] = {"layer": layer, "stall_ms_total": running_total(stall_s[mine] * 1e3),
                               "steps_stalled": int(np.count_nonzero(stall_s[mine] > 0)), "fetch_ms_total": running_total(fetch_ms),
                               "fetch_ms_max": max(0.0, float(fetch_ms.max()))}
        acc |= {key: int(counts[key][mine].sum()) for key in LAYER_COUNTS + SPLIT_COUNTS}
        acc["dedup_ratio"] = acc["references"] / max(1, acc["rows_unique"])
        layers.append(acc)
    return layers


def running_total(values: np.ndarray) -> float:
    """The sum of `values` added one by one in order (np.sum adds pairwise, which rounds differently)."""
    return float(np.add.accumulate(values)[-1]) if values.size else 0.0


@dataclass(frozen=True, kw_only=True)
class MetricContext:
    """What a metric is computed from: the offloaded pass, the reference passes when they ran (all
    tables in HBM; no Engram at all), and the run's settings. Shared intermediates are cached."""

    outcome: RunOutcome
    baseline: RunOutcome | None = None
    no_engram: RunOutcome | None = None
    seed: int
    link_gbps: float

    @cached_property
    def layers(self) -> list[dict[str, Any]]:
        return per_layer(self.outcome.steps)

    def total(self, key: str) -> Any:
        """A per-layer column summed over the layers (in layer order, so float sums are reproducible)."""
        return sum(layer[key] for layer in self.layers)

    @cached_property
    def series_ms(self) -> dict[str, dict[str, float]]:
        """Quantiles of the step latency, time to first token and time per output token."""
        latencies = self.outcome.steps.step_column("latency_s")
        return {"step_latency": quantiles_ms(latencies), "ttft": quantiles_ms(self.outcome.ttft_s),
                "tpot": quantiles_ms(self.outcome.tpot_s)}

    @cached_property
    def speculation(self) -> Speculation | None:
        """How well the speculative rows guessed (`Speculation`); None without speculative rows, or
        when the records do not count the guessed rows (`LayerRecord.rows_guessed`)."""
        speculative = self.total("rows_speculative")
        if not speculative or "rows_guessed" not in LAYER_FIELDS:
            return None
        guessed = int(self.outcome.steps.layer_column("rows_guessed").sum())
        return Speculation.of(speculative, guessed, self.total("rows_missed"), self.total("bytes_fetched") / self.total("rows_fetched"))

    def per_second(self, amount: float) -> float:
        """`amount` over the makespan (0 for an empty run)."""
        return amount / self.outcome.makespan_s if self.outcome.makespan_s > 0 else 0.0


@dataclass(frozen=True)
class Speculation:
    """Speculative rows against the rows the step after them needed. A speculative row is used when
    the next step of its layer needs it and would fetch it (outside HBM, not cached): `guessed`
    counts those, at the step that needs them, so guessed <= speculative and guessed <= missed."""

    precision: float  # guessed / speculative rows fetched
    recall: float  # guessed / needed rows outside HBM and not cached (0 when there are none)
    wasted_bytes: int  # (speculative - guessed) x row bytes: speculative rows no next step needed

    @classmethod
    def of(cls, speculative: int, guessed: int, missed: int, row_bytes: float) -> Speculation:
        if not 0 <= guessed <= min(speculative, missed) or speculative <= 0:
            raise ValueError(f"{guessed} guessed rows of {speculative} speculative and {missed} missed rows")
        return cls(guessed / speculative, guessed / missed if missed else 0.0, int(round((speculative - guessed) * row_bytes)))


def _speculation(name: str) -> Callable[[MetricContext], Value]:
    return lambda c: None if c.speculation is None else getattr(c.speculation, name)


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One summary metric. `name` is its results.json key; `label`, `digits` and `group` are how the
    terminal shows it (`group` None: results.json only); `validated`: `engramsim validate` compares
    it between the real and the simulated run."""

    name: str
    unit: str
    meaning: str
    compute: Callable[[MetricContext], Value]
    label: str
    digits: int = 2
    group: str | None = None
    validated: bool = False

    def __post_init__(self) -> None:
        if self.group is not None and self.group not in GROUPS:
            raise ValueError(f"metric {self.name}: group {self.group!r} is not one of {GROUPS}")
        if "|" in self.unit + self.meaning:
            raise ValueError(f"metric {self.name}: '|' would break the README table")

    def number(self, value: Value) -> str:
        """The value as the terminal shows it, without the unit ("-" when there is none)."""
        if value is None:
            return "-"
        return f"{value:,}" if isinstance(value, int) else f"{value:,.{self.digits}f}"

    def display(self, value: Value) -> str:
        return f"{self.number(value)} {self.unit}".rstrip()


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to every output; names are unique."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name} is already registered")
    METRICS[metric.name] = metric
    return metric


def registered() -> dict[str, Metric]:
    """Every metric, those of installed plugin packages included (a module named by an
    `engramsim.plugins` entry point may call `register` when imported)."""
    from engramsim.registry import plugins

    plugins()  # imports the built-ins and every entry point once
    return METRICS


def in_group(group: str) -> list[Metric]:
    """The metrics `engramsim run` prints under `group`, in declaration order."""
    return [m for m in registered().values() if m.group == group]


def validated_metrics() -> list[Metric]:
    """The metrics `engramsim validate` compares, in declaration order."""
    return [m for m in registered().values() if m.validated]


def readme_table() -> str:
    """The README's summary-metrics table (the "## Results" section), one row per metric."""
    rows = ["| key | unit | meaning |", "|---|---|---|"]
    rows += [f"| `summary.{m.name}` | {m.unit} | {m.meaning} |" for m in registered().values()]
    return "\n".join(rows) + "\n"


def loss_pct(reference: RunOutcome | None, outcome: RunOutcome) -> float | None:
    """Throughput lost against a reference pass, in percent (None without the reference)."""
    if reference is None or not reference.throughput_tok_s:
        return None
    ref = reference.throughput_tok_s
    return (ref - outcome.throughput_tok_s) / ref * 100


def _throughput(outcome: RunOutcome | None) -> float | None:
    return None if outcome is None else outcome.throughput_tok_s


def _serving(name: str) -> Callable[[MetricContext], Value]:
    """The compute function of one of the scheduler's counts (None for an outcome without them)."""
    def compute(c: MetricContext) -> Value:
        counts: ServingCounts | None = c.outcome.serving
        return None if counts is None else getattr(counts, name)
    return compute


def _hit_rate(c: MetricContext) -> float | None:
    outside_hbm = c.total("cache_hits") + c.total("rows_missed")
    return c.total("cache_hits") / outside_hbm if outside_hbm else None


def _dropped_pct(c: MetricContext) -> float | None:
    references = int(c.outcome.steps.layer_column("references").sum())
    return int(c.outcome.steps.layer_column("references_dropped").sum()) / references * 100 if references else None


def _quantile_ms(series: str, stat: str) -> Callable[[MetricContext], float]:
    """The compute function of one quantile of one latency series."""
    return lambda c: c.series_ms[series][stat]


def _register_quantiles(series: str, what: str, label: str, digits: int, printed: tuple[str, ...],
                        validated: tuple[str, ...] = ()) -> None:
    """The mean, p50 and p99 metrics of one latency series, `<series>_ms_<stat>`."""
    for stat, stat_meaning in (("mean", "mean"), ("p50", "median"), ("p99", "99th percentile")):
        register(Metric(name=f"{series}_ms_{stat}", unit="ms", meaning=f"{stat_meaning} {what}", label=f"{label} {stat}",
                        compute=_quantile_ms(series, stat), digits=digits,
                        group="latencies" if stat in printed else None, validated=stat in validated))


register(Metric(name="throughput_tok_s", unit="tok/s", label="output throughput", group="throughput", validated=True,
                meaning="output tokens / makespan (nano-vLLM's definition)",
                compute=lambda c: c.outcome.throughput_tok_s))
register(Metric(name="baseline_throughput_tok_s", unit="tok/s", label="all tables in HBM", group="overheads",
                meaning="throughput of the same steps with every table in HBM (null without `run.baseline`)",
                compute=lambda c: _throughput(c.baseline)))
register(Metric(name="overhead_pct", unit="%", label="overhead vs all-HBM", group="overheads", digits=3,
                meaning="throughput lost against the all-HBM pass",
                compute=lambda c: loss_pct(c.baseline, c.outcome)))
register(Metric(name="no_engram_throughput_tok_s", unit="tok/s", label="without Engram", group="overheads",
                meaning="throughput of the backbone alone, without Engram (null without `run.baseline`)",
                compute=lambda c: _throughput(c.no_engram)))
register(Metric(name="overhead_vs_no_engram_pct", unit="%", label="overhead vs no Engram", group="overheads", digits=3,
                meaning="throughput lost against the pass without Engram",
                compute=lambda c: loss_pct(c.no_engram, c.outcome)))
_register_quantiles("step_latency", "step latency", "step latency", 3, ("p50", "p99"), validated=("mean", "p99"))
_register_quantiles("ttft", "time to first token", "TTFT", 1, ("p50", "p99"))
_register_quantiles("tpot", "time per output token", "TPOT", 3, ("p50", "p99"))
register(Metric(name="engram_stall_ms_total", unit="ms", label="Engram stall total", group="stall", digits=3, validated=True,
                meaning="time the compute stream waited for rows, all Engram layers",
                compute=lambda c: c.total("stall_ms_total")))
register(Metric(name="pcie_bytes", unit="bytes", label="PCIe bytes", group="link traffic",
                meaning="bytes of the rows fetched over the host-device link (what a transport moves beyond them, "
                "whole NVMe pages for nvme-direct or rounded zero-copy reads, shows in pcie_utilisation)",
                compute=lambda c: c.total("bytes_fetched")))
register(Metric(name="pcie_avg_gbps", unit="GB/s", label="PCIe average", group="link traffic", digits=4,
                meaning="pcie_bytes / makespan",
                compute=lambda c: c.per_second(c.total("bytes_fetched")) / 1e9))
register(Metric(name="pcie_utilisation", unit="fraction", label="PCIe busy", group="link traffic", digits=4,
                meaning="link busy time / makespan",
                compute=lambda c: c.per_second(c.outcome.link_busy_s)))
register(Metric(name="link_gbps", unit="GB/s", label="link bandwidth",
                meaning="the profile's host-to-device link bandwidth",
                compute=lambda c: c.link_gbps))
register(Metric(name="rows_fetched", unit="rows", label="rows fetched", group="rows",
                meaning="rows moved over the link (misses not staged, speculative rows, waiting requests' rows)",
                compute=lambda c: c.total("rows_fetched")))
register(Metric(name="rows_fetched_per_step_mean", unit="rows/step", label="rows fetched per step", group="rows", digits=0,
                meaning="rows fetched per step, mean over steps",
                compute=lambda c: c.total("rows_fetched") / max(1, len(c.outcome.steps))))
register(Metric(name="rows_placed_hbm", unit="rows", label="rows placed in HBM", group="rows",
                meaning="needed rows the placement keeps in HBM",
                compute=lambda c: c.total("rows_placed_hbm")))
register(Metric(name="cache_hits", unit="rows", label="cache hits", group="rows",
                meaning="needed rows outside HBM found in the HBM cache",
                compute=lambda c: c.total("cache_hits")))
register(Metric(name="rows_missed", unit="rows", label="rows missed", group="rows",
                meaning="needed rows outside HBM and not cached, fetched for their step or staged",
                compute=lambda c: c.total("rows_missed")))
register(Metric(name="rows_staged", unit="rows", label="rows staged", group="rows",
                meaning="of the rows missed, rows served from the HBM staging area: fetched by an earlier step (a right guess, "
                        "a waiting request's prompt row), not fetched again",
                compute=lambda c: c.total("rows_staged")))
register(Metric(name="rows_waiting", unit="rows", label="rows for waiting requests", group="rows",
                meaning="rows fetched into the HBM staging area for waiting requests' prefills (prefill-ahead's fetch_waiting)",
                compute=lambda c: c.total("rows_waiting")))
register(Metric(name="rows_speculative", unit="rows", label="rows speculative", group="rows",
                meaning="rows fetched beyond a step's needs (a predictor's guesses)",
                compute=lambda c: c.total("rows_speculative")))
register(Metric(name="speculative_precision", unit="fraction", label="speculative precision", group="rows", digits=3,
                meaning="speculative rows the next step needed / speculative rows fetched (null without speculative rows)",
                compute=_speculation("precision")))
register(Metric(name="speculative_recall", unit="fraction", label="speculative recall", group="rows", digits=3,
                meaning="needed rows outside HBM and not cached that the step before fetched speculatively / those rows "
                        "(null without speculative rows)",
                compute=_speculation("recall")))
register(Metric(name="speculative_wasted_bytes", unit="bytes", label="speculative bytes wasted", group="rows",
                meaning="bytes of the speculative rows the next step did not need (null without speculative rows)",
                compute=_speculation("wasted_bytes")))
register(Metric(name="cache_hit_rate", unit="fraction", label="cache hit rate", group="rows", digits=3,
                meaning="cache hits / needed rows outside HBM (null when every needed row is placed in HBM)",
                compute=_hit_rate))
register(Metric(name="dedup_ratio", unit="refs/row", label="dedup ratio", group="rows", digits=3,
                meaning="row references / unique rows (rows are deduplicated per step and layer)",
                compute=lambda c: c.total("references") / max(1, c.total("rows_unique"))))
register(Metric(name="lookups_dropped_pct", unit="%", label="lookups dropped", group="quality", digits=3,
                meaning="row references whose rows had not landed when their Engram layer went ahead without them "
                        "(prefetch `deadline`) / row references (null without Engram lookups)",
                compute=_dropped_pct))
register(Metric(name="kv_blocks_total", unit="blocks", label="KV-cache blocks", group="serving",
                meaning="blocks of the paged KV cache (the scheduler's block_size tokens each)",
                compute=_serving("kv_blocks")))
register(Metric(name="kv_utilisation_mean", unit="fraction", label="KV cache in use, mean", group="serving", digits=4,
                meaning="KV blocks in use while a step runs / blocks, mean over steps",
                compute=_serving("kv_used_mean")))
register(Metric(name="kv_utilisation_peak", unit="fraction", label="KV cache in use, peak", group="serving", digits=4,
                meaning="the most KV blocks in use while a step runs / blocks",
                compute=_serving("kv_used_peak")))
register(Metric(name="preemptions", unit="sequences", label="preemptions", group="serving",
                meaning="sequences preempted for want of a free KV block (blocks freed, prefilled again later)",
                compute=_serving("preemptions")))
register(Metric(name="recomputed_tokens", unit="tokens", label="recomputed tokens", group="serving",
                meaning="tokens prefilled again after a preemption",
                compute=_serving("recomputed_tokens")))
register(Metric(name="steps", unit="steps", label="steps", group="run size",
                meaning="steps executed",
                compute=lambda c: len(c.outcome.steps)))
register(Metric(name="makespan_s", unit="s", label="makespan", group="run size", digits=3,
                meaning="simulated or measured time from the first step to the last",
                compute=lambda c: c.outcome.makespan_s))
register(Metric(name="output_tokens", unit="tokens", label="output tokens", group="run size",
                meaning="tokens generated",
                compute=lambda c: c.outcome.output_tokens))
register(Metric(name="prompt_tokens", unit="tokens", label="prompt tokens", group="run size",
                meaning="prompt tokens prefilled, each counted once (prefilled again after a preemption: recomputed_tokens)",
                compute=lambda c: c.outcome.prompt_tokens))
register(Metric(name="seed", unit="", label="seed",
                meaning="the scenario's seed",
                compute=lambda c: c.seed))


if __name__ == "__main__":
    print(readme_table(), end="")

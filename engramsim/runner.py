"""Run a scenario: resolve its names, build the workload once, execute, write the results.

Every executor runs the scenario three times on the same steps: as configured, with every table
in HBM (the baseline the overhead is measured against) and without Engram at all (the reference
the paper's Table 4 uses). The simulator prices the passes (`run_sim`); the real backends execute
them with torch on the CPU or a CUDA GPU and time them (`run_real_report`, imported lazily so a
simulated run never loads torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from engramsim.errors import InputError
from engramsim.plan import Planner
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.registry import build
from engramsim.results import RunOutcome, results_document, summarize, write_results
from engramsim.scenario import Scenario, StrategyChoice
from engramsim.scenario_io import dump_scenario
from engramsim.simulator.cost import CostModel
from engramsim.simulator.engine import Engine, simulate
from engramsim.simulator.presets import load_profile
from engramsim.simulator.profile import HardwareProfile
from engramsim.strategies import SetupContext, TableInfo, Tier
from engramsim.tokenizer import compressed_vocab
from engramsim.traces.format import load_trace
from engramsim.workload import Workload, build_workload

GIB = 1 << 30


@dataclass
class Prepared:
    """A scenario with every name resolved and the workload built, ready for any executor."""

    scenario: Scenario
    source: str
    profile: HardwareProfile
    hashing: EngramHashing
    tables: dict[int, TableInfo]
    workload: Workload

    def setup(self) -> SetupContext:
        return SetupContext(self.scenario, self.tables, self.profile, self.scenario.run.seed)


def engram_tables(scenario: Scenario, hashing: EngramHashing) -> dict[int, TableInfo]:
    row_bytes = scenario.model.engram.row_bytes
    return {
        layer: TableInfo(layer, hashing.rows_per_layer[layer], row_bytes, hashing.primes[layer], hashing.offsets[layer])
        for layer in scenario.model.engram.layers
    }


def check_capacity(prepared: Prepared) -> None:
    """A placement that puts more bytes in a tier than the hardware has is an input error."""
    placement = build("placement", prepared.scenario.strategies.placement, prepared.setup())
    capacity = {Tier.HBM: prepared.profile.gpu.hbm_gib * GIB, Tier.HOST: prepared.profile.host.dram_gib * GIB}
    names = {Tier.HBM: f"HBM of {prepared.profile.gpu.name}", Tier.HOST: f"host DRAM of {prepared.profile.host.name}"}
    for tier, used in placement.bytes_per_tier().items():
        if tier in capacity and used > capacity[tier]:
            raise InputError(
                prepared.source,
                f"Engram tables need {used / GIB:.1f} GiB in the {names[tier]}, which holds {capacity[tier] / GIB:.1f} GiB",
                field="strategies.placement",
            )


def prepare(scenario: Scenario, source: str) -> Prepared:
    engram = scenario.model.engram
    profile = load_profile(scenario.hardware.profile, scenario.hardware.link)
    trace = load_trace(scenario.workload.trace)
    vocab = compressed_vocab(engram.tokenizer)
    spec = EngramHashSpec(tuple(engram.layers), engram.rows_per_order, engram.max_ngram, engram.heads, engram.seed)
    hashing = EngramHashing(spec, vocab.size, int(vocab.table[spec.pad_id]))
    workload = build_workload(scenario, trace, hashing, vocab)
    prepared = Prepared(scenario, source, profile, hashing, engram_tables(scenario, hashing), workload)
    check_capacity(prepared)
    return prepared


def planner(prepared: Prepared, placement: StrategyChoice | None = None) -> Planner:
    """Fresh placement, cache and prefetch strategies for one pass (caches start empty)."""
    setup, strategies = prepared.setup(), prepared.scenario.strategies
    return Planner(
        build("placement", placement or strategies.placement, setup),
        build("cache", strategies.cache, setup),
        build("prefetch", strategies.prefetch, setup),
    )


def simulate_run(prepared: Prepared, placement: StrategyChoice | None = None, engram: bool = True,
                 progress: Callable | None = None) -> RunOutcome:
    """One simulated pass over the workload; `placement` overrides the scenario's."""
    scenario, setup = prepared.scenario, prepared.setup()
    strategies = scenario.strategies
    engine = Engine(
        CostModel(scenario.model, prepared.profile),
        prepared.tables,
        scenario.model.backbone.layers,
        planner(prepared, placement),
        build("transport", strategies.transport, setup),
        prepared.profile.gpu.copy_engines,
        engram=engram,
    )
    scheduler = prepared.workload.scheduler()
    sim = simulate(engine, scheduler, scenario.run.max_steps, progress)
    ttft, tpot = scheduler.latencies()
    return RunOutcome(sim, scheduler.output_tokens, scheduler.prompt_tokens, ttft, tpot)


@dataclass
class RunReport:
    document: dict
    files: list[Path]
    outcome: RunOutcome
    baseline: RunOutcome | None
    no_engram: RunOutcome | None


def passes(scenario: Scenario) -> list[tuple[str, dict]]:
    """(progress label, executor kwargs) of every pass: as configured, then the references."""
    out: list[tuple[str, dict]] = [("offloaded", {})]
    if scenario.run.baseline:
        out += [("all-HBM baseline", {"placement": StrategyChoice(name="all-hbm")}), ("no-Engram reference", {"engram": False})]
    return out


def _run_passes(prepared: Prepared, execute: Callable[..., RunOutcome], progress_factory: Callable | None) -> list[RunOutcome]:
    outcomes = []
    for label, kwargs in passes(prepared.scenario):
        if progress_factory is None:
            outcomes.append(execute(**kwargs))
        else:
            with progress_factory(label, prepared.workload.total_output_tokens) as advance:
                outcomes.append(execute(progress=advance, **kwargs))
    return outcomes


def _report(prepared: Prepared, out_dir: Path, outcomes: list[RunOutcome], backend: str,
            extra: dict | None = None, counters: list[dict] | None = None) -> RunReport:
    """Summary, results document and files of the passes; `extra` adds top-level keys (CUDA: nvml)."""
    scenario = prepared.scenario
    outcome = outcomes[0]
    baseline, no_engram = (outcomes[1], outcomes[2]) if scenario.run.baseline else (None, None)
    summary = summarize(outcome, baseline, scenario.run.seed, prepared.profile.link.h2d_gbps)
    if no_engram is not None:
        ref = no_engram.throughput_tok_s
        summary["no_engram_throughput_tok_s"] = ref
        summary["overhead_vs_no_engram_pct"] = (ref - outcome.throughput_tok_s) / ref * 100 if ref else None
    document = results_document(summary, outcome, dump_scenario(scenario), prepared.profile.model_dump(mode="json"), backend)
    document |= extra or {}
    files = write_results(out_dir, document, outcome, baseline, scenario.run.outputs, counters=counters)
    return RunReport(document, files, outcome, baseline, no_engram)


def run_sim(prepared: Prepared, out_dir: Path, progress_factory: Callable | None = None) -> RunReport:
    return _report(prepared, out_dir, _run_passes(prepared, partial(simulate_run, prepared), progress_factory), "sim")


def run_real(prepared: Prepared, backend: str, placement: StrategyChoice | None = None, engram: bool = True,
             progress: Callable | None = None) -> RunOutcome:
    """One measured pass on the "cpu" or "cuda" backend, mirroring `simulate_run`: the same steps
    and Planner decisions, executed with torch (engramsim/backends/executor.py)."""
    from engramsim.backends.executor import RealSession

    with RealSession(prepared, backend, [placement]) as session:
        return session.run(placement, engram, progress)


def run_real_report(prepared: Prepared, backend: str, out_dir: Path, progress_factory: Callable | None = None) -> RunReport:
    """`run_sim` on real hardware: the same passes on one session (tables allocated once); the
    offloaded pass also samples hardware counters where the device has them (CUDA: NVML)."""
    from engramsim.backends.executor import RealSession

    placements = [kwargs.get("placement") for _, kwargs in passes(prepared.scenario) if kwargs.get("engram", True)]
    with RealSession(prepared, backend, placements) as session:
        outcomes = _run_passes(prepared, lambda **kwargs: session.run(sample=session.sampler is None, **kwargs), progress_factory)
    sampler = session.sampler
    if sampler is None:
        return _report(prepared, out_dir, outcomes, backend)
    return _report(prepared, out_dir, outcomes, backend, {"nvml": sampler.summary()}, sampler.counters())


def fresh_run_dir(root: Path, name: str, seed: int) -> Path:
    """runs/<name>-s<seed>-NNN: a new folder each time, never overwriting an earlier run."""
    for n in range(1, 10_000):
        candidate = root / f"{name}-s{seed}-{n:03d}"
        if not candidate.exists():
            return candidate
    raise InputError(root, "no free run folder name left")



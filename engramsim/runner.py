"""Run a scenario: resolve its names, build the workload once, execute, write the results.

Every executor runs the scenario three times: as configured, with every table in HBM (the
baseline the overhead is measured against) and without Engram at all (the reference the paper's
Table 4 uses). Each pass has its own serving engine (`Prepared.scheduler`) and KV cache: the
offloaded pass and the all-HBM baseline get the blocks the configured pass's HBM items leave, so
with offline arrivals they run the same steps and the baseline isolates the cost of fetching rows (its hypothetical
all-HBM tables are not charged to the KV cache); the no-Engram pass gets the blocks a model
without Engram would, so it may batch and preempt differently. A simulated pass with offline
arrivals replays the steps its scheduler served once for every pass with the same KV cache
(`Prepared.served`, engramsim/schedule.py). The simulator prices the passes
(`run_sim`); the real backends execute them with torch on the CPU or a CUDA GPU and time them
(`run_real_report`, imported lazily so a simulated run never loads torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from engramsim.errors import InputError
from engramsim.metrics import loss_pct
from engramsim.records import RunOutcome, StepLog
from engramsim.registry import build
from engramsim.results import results_document, summarize, write_results
from engramsim.scenario import Node, Scenario, StrategyChoice, socket_of, switch_of
from engramsim.scenario_io import dump_scenario
from engramsim.schedule import Served
from engramsim.session import ALL_HBM, GIB, Prepared, planner, strategies
from engramsim.simulator.cost import RooflineCostModel
from engramsim.simulator.engine import CountingEnvironment, Engine, simulate, simulate_node
from engramsim.simulator.fast import never_fetches
from engramsim.simulator.node import Seat, seats
from engramsim.uncertainty import bands, sample_profile


def _engine(prepared: Prepared, placement: StrategyChoice | None, engram: bool, env: CountingEnvironment | None = None,
            seat: Seat | None = None) -> Engine:
    scenario = prepared.scenario
    return Engine(
        RooflineCostModel(scenario.model, prepared.profile),
        prepared.tables,
        scenario.model.backbone.layers,
        build("transport", scenario.strategies.transport, prepared.setup()),
        prepared.profile.gpu.copy_engines,
        strategies(prepared, placement)[0] if engram else None,
        env,
        seat,
    )


def _outcome(engine: Engine, scheduler: Served, steps: StepLog, makespan: float) -> RunOutcome:
    ttft, tpot = scheduler.latencies()
    return RunOutcome(steps=steps, spans=engine.spans, events=engine.env.event_count, link_busy_s=engine.link.busy_s,
                      makespan_s=makespan, output_tokens=scheduler.output_tokens, prompt_tokens=scheduler.prompt_tokens,
                      ttft_s=ttft, tpot_s=tpot, serving=scheduler.serving())


def simulate_run(prepared: Prepared, placement: StrategyChoice | None = None, engram: bool = True,
                 progress: Callable | None = None) -> RunOutcome:
    """One simulated pass over the workload; `placement` overrides the scenario's. A node
    (hardware.node) runs every GPU's replica at once on its shared host (`simulate_gpus`)."""
    node = prepared.scenario.hardware.node
    if node is not None and node.shared:
        return simulate_gpus(prepared, node, placement, engram, progress)
    engine = _engine(prepared, placement, engram)
    scheduler = prepared.served(engram)
    steps, makespan = simulate(engine, scheduler, planner(prepared, placement, engram), prepared.scenario.run.max_steps, progress)
    return _outcome(engine, scheduler, steps, makespan)


def simulate_gpus(prepared: Prepared, node: Node, placement: StrategyChoice | None, engram: bool,
                  progress: Callable | None) -> RunOutcome:
    """A node's pass: each GPU serves its own replica, all in one environment sharing the host's
    fabric (simulator/node.py); a pass that can never fetch shares nothing, so each GPU runs alone
    (on the fast path). The outcome joins the GPUs' (`RunOutcome.of_node`)."""
    replicas = [prepared.replica(gpu) for gpu in range(node.gpus)]
    planners = [planner(replica, placement, engram) for replica in replicas]
    schedulers = [replica.served(engram) for replica in replicas]
    max_steps = prepared.scenario.run.max_steps
    if all(never_fetches(p) for p in planners):
        engines = [_engine(replica, placement, engram) for replica in replicas]
        served = [simulate(*parts, max_steps, progress) for parts in zip(engines, schedulers, planners, strict=True)]
        events = sum(engine.env.event_count for engine in engines)
    else:
        env = CountingEnvironment()
        engines = [_engine(replica, placement, engram, env, seat)
                   for replica, seat in zip(replicas, seats(env, node, prepared.profile), strict=True)]
        served = simulate_node(engines, schedulers, planners, max_steps, progress)
        events = env.event_count
    return RunOutcome.of_node([_outcome(*parts, *run) for parts, run in zip(zip(engines, schedulers), served, strict=True)],
                              events)


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
        out += [("all-HBM baseline", {"placement": ALL_HBM}), ("no-Engram reference", {"engram": False})]
    return out


def real_placements(scenario: Scenario) -> list[StrategyChoice | None]:
    """The placements of the passes that hold Engram tables: a real session allocates for these."""
    return [kwargs.get("placement") for _, kwargs in passes(scenario) if kwargs.get("engram", True)]


def run_passes(prepared: Prepared, execute: Callable[..., RunOutcome], progress_factory: Callable | None) -> list[RunOutcome]:
    """Every pass of `passes`, executed by `execute(**kwargs)` (under a progress bar each, if asked)."""
    outcomes = []
    for label, kwargs in passes(prepared.scenario):
        if progress_factory is None:
            outcomes.append(execute(**kwargs))
        else:
            with progress_factory(label, sum(w.total_output_tokens for w in prepared.workloads)) as advance:
                outcomes.append(execute(progress=advance, **kwargs))
    return outcomes


def split_passes(prepared: Prepared, outcomes: list[RunOutcome]) -> tuple[RunOutcome, RunOutcome | None, RunOutcome | None]:
    """(offloaded, all-HBM baseline, no-Engram reference) of `run_passes`' outcomes."""
    return (outcomes[0], outcomes[1], outcomes[2]) if prepared.scenario.run.baseline else (outcomes[0], None, None)


def summarize_passes(prepared: Prepared, outcomes: list[RunOutcome]) -> dict:
    """The results' summary metrics of `run_passes`' outcomes."""
    outcome, baseline, no_engram = split_passes(prepared, outcomes)
    return summarize(outcome, baseline, prepared.scenario.run.seed, prepared.profile.link.h2d_gbps, no_engram=no_engram)


def _report(prepared: Prepared, out_dir: Path, outcomes: list[RunOutcome], backend: str,
            extra: dict | None = None, counters: list[dict] | None = None) -> RunReport:
    """Summary, results document and files of the passes; `extra` adds top-level keys (CUDA: nvml)."""
    outcome, baseline, no_engram = split_passes(prepared, outcomes)
    document = results_of(prepared, outcomes, backend, extra)
    files = write_results(out_dir, document, outcome, baseline, no_engram, prepared.scenario.run.outputs, counters=counters)
    return RunReport(document, files, outcome, baseline, no_engram)


def results_of(prepared: Prepared, outcomes: list[RunOutcome], backend: str, extra: dict | None = None) -> dict:
    """results.json's document of the passes (`engramsim sweep` writes it as each point's file)."""
    summary = summarize_passes(prepared, outcomes)
    hardware = prepared.profile.model_dump(mode="json", exclude={"uncertainty"})  # the spreads are `bands`', where drawn
    document = results_document(summary, outcomes[0], dump_scenario(prepared.scenario), hardware, backend)
    document["hbm"] = hbm_report(prepared)
    if outcomes[0].gpus:
        document["node"] = node_report(prepared, outcomes)
    sources = strategy_sources(prepared)
    if sources:
        document["sources"] = sources
    document |= extra or {}
    return document


def node_report(prepared: Prepared, outcomes: list[RunOutcome]) -> dict:
    """results.json's `node`: its shape and each GPU's pass (where it sits, what it served, how
    long, its stall and link time, and its overhead against its own all-HBM pass)."""
    node = prepared.scenario.hardware.node
    assert node is not None
    outcome, baseline, _ = split_passes(prepared, outcomes)
    per_gpu = []
    for gpu, run in enumerate(outcome.gpus):
        row: dict[str, float | None] = {"gpu": gpu, "socket": socket_of(gpu, node), "switch": switch_of(gpu, node), "steps": len(run.steps),
               "output_tokens": run.output_tokens, "makespan_s": run.makespan_s, "throughput_tok_s": run.throughput_tok_s,
               "stall_s": float(run.steps.layer_column("stall_s").sum()), "link_busy_s": run.link_busy_s}
        if baseline is not None:
            row["overhead_pct"] = loss_pct(baseline.gpus[gpu], run)
        per_gpu.append(row)
    return node.model_dump(mode="json") | {"per_gpu": per_gpu}


def strategy_sources(prepared: Prepared) -> dict:
    """Per strategy kind, the tokens a policy learned from, for those that learn (`source()`: a
    frequency profile, a predictor): results.json's `sources`, absent when none does."""
    out = {}
    for kind, chosen in zip(("placement", "cache", "prefetch"), strategies(prepared), strict=True):
        source = getattr(chosen, "source", None)
        if callable(source):
            out[kind] = source()
    return out


def hbm_report(prepared: Prepared) -> dict:
    """What the configured pass keeps in HBM (bytes, by item), the part the engine may use, and the
    KV cache each pass gets from the rest (blocks and bytes)."""
    kv = prepared.kv
    return {"capacity_bytes": int(prepared.profile.gpu.hbm_gib * GIB), "usable_bytes": kv.usable_bytes,
            "items_bytes": dict(prepared.hbm), "kv_block_size": kv.block_size, "kv_block_bytes": kv.block_bytes,
            "kv_blocks": kv.blocks, "kv_bytes": kv.blocks * kv.block_bytes,
            "kv_blocks_without_engram": kv.blocks_without_engram}


def sampled(prepared: Prepared, index: int) -> tuple[Prepared, dict]:
    """Sample `index` (from 1) of the scenario: its profile drawn from the spreads (engramsim/uncertainty.py,
    seeded by run.seed), and results.json's `sample` record (the index, the seed, the values drawn)."""
    seed = prepared.scenario.run.seed
    profile, drawn = sample_profile(prepared.profile, seed, index)
    return replace(prepared, profile=profile), {"index": index, "seed": seed, "values": drawn}


def simulate_samples(prepared: Prepared, samples: int, progress_factory: Callable | None = None) -> dict:
    """results.json's `bands`: every pass simulated on `samples` drawn profiles, and each numeric
    summary metric's p5 / p50 / p95 over them (`summary` keeps the profile's own numbers)."""
    summaries = []
    for index in range(1, samples + 1):
        one = sampled(prepared, index)[0]
        progress = None if progress_factory is None else (
            lambda label, total, index=index: progress_factory(f"sample {index}/{samples}: {label}", total))
        summaries.append(summarize_passes(one, run_passes(one, partial(simulate_run, one), progress)))
    metrics = {}
    for name in summaries[0]:
        values = [s[name] for s in summaries]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            metrics[name] = bands(values)
    return {"samples": samples, "seed": prepared.scenario.run.seed,
            "spreads": {key: spread.model_dump(mode="json") for key, spread in sorted(prepared.profile.uncertainty.items())},
            "metrics": metrics}


def run_sim(prepared: Prepared, out_dir: Path, progress_factory: Callable | None = None, samples: int = 0) -> RunReport:
    """The passes simulated, and with `samples` their bands over profiles drawn from the spreads (`simulate_samples`)."""
    outcomes = run_passes(prepared, partial(simulate_run, prepared), progress_factory)
    extra = {"bands": simulate_samples(prepared, samples, progress_factory)} if samples else None
    return _report(prepared, out_dir, outcomes, "sim", extra)


def run_real(prepared: Prepared, backend: str, placement: StrategyChoice | None = None, engram: bool = True,
             progress: Callable | None = None) -> RunOutcome:
    """One measured pass on the "cpu" or "cuda" backend, mirroring `simulate_run`: the same steps
    and Planner decisions, executed with torch (engramsim/backends/executor.py)."""
    from engramsim.backends.executor import RealSession

    with RealSession(prepared, backend, [placement]) as session:
        return session.run(placement, engram, progress)


def real_passes(prepared: Prepared, backend: str, progress_factory: Callable | None = None,
                setup_progress: Callable | None = None) -> tuple[list[RunOutcome], Any]:
    """Every pass of `passes` measured on one real session (tables allocated once), and the
    hardware monitor the offloaded pass sampled (None where the device has none). A refusal of
    the session (`SessionLayout`, the device's memory check) is one InputError before any pass."""
    from engramsim.backends.executor import RealSession

    placements = real_placements(prepared.scenario)
    with RealSession(prepared, backend, placements, setup_progress) as session:
        outcomes = run_passes(prepared, lambda **kwargs: session.run(sample=session.sampler is None, **kwargs), progress_factory)
    return outcomes, session.sampler


def run_real_report(prepared: Prepared, backend: str, out_dir: Path, progress_factory: Callable | None = None,
                    setup_progress: Callable | None = None) -> RunReport:
    """`run_sim` on real hardware: the same passes on one session (tables allocated once); the
    offloaded pass also samples hardware counters where the device has them (CUDA: NVML).
    `setup_progress(label, total_bytes)` follows the session's allocation (backends/executor.py)."""
    outcomes, sampler = real_passes(prepared, backend, progress_factory, setup_progress)
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



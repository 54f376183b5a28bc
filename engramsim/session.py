"""Prepare a scenario once for any executor: resolve its names, build the hashing plugin and the
workload, check that its placement and HBM budget fit the hardware, and make the planners of
its passes.

Every check runs here, before a pass starts, so a scenario that cannot run fails with one
`InputError` line naming the file and the field to change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engramsim.errors import InputError
from engramsim.hardware.presets import load_profile
from engramsim.hardware.profile import HardwareProfile
from engramsim.hbm import hbm_items
from engramsim.plan import Planner
from engramsim.registry import build, build_hashing
from engramsim.scenario import Scenario, StrategyChoice
from engramsim.strategies import PRICED_TIERS, Cache, Hashing, HashingSetup, Placement, Prefetch, SetupContext, TableInfo, Tier
from engramsim.tokenizer import compressed_vocab
from engramsim.traces.format import load_trace
from engramsim.workload import Workload, build_workload

GIB = 1 << 30
PAD_ID = 2  # raw id of the pad token before a sequence's start (ENGRAM.md step 2)
ALL_HBM = StrategyChoice(name="all-hbm")


@dataclass
class Prepared:
    """A scenario with every name resolved and the workload built, ready for any executor."""

    scenario: Scenario
    source: str
    profile: HardwareProfile
    hashing: Hashing
    tables: dict[int, TableInfo]
    workload: Workload
    hbm: dict[str, int]  # what the configured pass keeps in HBM, by item (see engramsim/hbm.py)

    def setup(self) -> SetupContext:
        return SetupContext(self.scenario, self.tables, self.profile, self.scenario.run.seed)


def engram_tables(scenario: Scenario, hashing: Hashing) -> dict[int, TableInfo]:
    row_bytes = scenario.model.engram.row_bytes
    return {
        layer: TableInfo(layer, hashing.rows_per_layer[layer], row_bytes, hashing.head_sizes[layer], hashing.offsets[layer])
        for layer in scenario.model.engram.layers
    }


def check_tiers(source: str, placement: Placement, profile: HardwareProfile) -> None:
    """Refuse a placement that uses a tier no executor prices, or puts more in host DRAM than
    the host has (HBM is checked with everything else that lives there, `check_hbm`)."""
    used = placement.bytes_per_tier()
    unpriced = [tier.name for tier, size in used.items() if size > 0 and tier not in PRICED_TIERS]
    if unpriced:
        raise InputError(source, f"placement {placement.name!r} puts rows in {', '.join(unpriced)}, which no executor "
                         f"prices yet; supported tiers: {', '.join(t.name for t in PRICED_TIERS)}", field="strategies.placement")
    dram = profile.host.dram_gib * GIB
    if used.get(Tier.HOST, 0) > dram:
        raise InputError(source, f"Engram tables need {used[Tier.HOST] / GIB:.1f} GiB in the host DRAM of "
                         f"{profile.host.name}, which holds {dram / GIB:.1f} GiB", field="strategies.placement")


def check_hbm(source: str, items: dict[str, int], profile: HardwareProfile) -> None:
    """One line naming what fills the GPU's HBM when the items do not fit, and the field of the biggest."""
    capacity = profile.gpu.hbm_gib * GIB
    needed = sum(items.values())
    if needed <= capacity:
        return
    biggest = max(items, key=lambda k: items[k])
    parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in sorted(items.items(), key=lambda kv: -kv[1]) if size)
    raise InputError(source, f"the run needs {needed / GIB:.2f} GiB of HBM ({parts} GiB), the {profile.gpu.name} "
                     f"has {capacity / GIB:.2f} GiB", field=HBM_FIELDS[biggest])


HBM_FIELDS = {
    "backbone weights": "model.backbone", "Engram modules": "model.engram", "Engram tables in HBM": "strategies.placement",
    "Engram caches": "strategies.cache", "Engram staging buffers": "strategies.prefetch",
    "KV cache (one longest sequence)": "workload.prompt_len",
}


@contextlib.contextmanager
def located(source: str, field: str) -> Iterator[None]:
    """Name the scenario file and the field that pointed at a file that failed to load."""
    try:
        yield
    except InputError as exc:
        if exc.source == source:
            raise
        if exc.field and exc.field.startswith(field):  # the scenario's own field: name it once, then the file
            raise InputError(source, f"{exc.source}: {exc.problem}", field=exc.field) from None
        raise InputError(source, str(exc), field=field) from None


def check_trace(source: str, scenario: Scenario, tokens: np.ndarray, vocab_ids: int) -> None:
    """Refuse a trace the tokenizer cannot have produced, or one too short for the longest request
    (unless the scenario asks for windows to wrap around its end)."""
    if tokens.size and int(tokens.max()) >= vocab_ids:  # trace tokens are uint32: never negative
        raise InputError(source, f"trace holds token id {int(tokens.max())}, outside the tokenizer's {vocab_ids:,} ids "
                         "(tokenized with another tokenizer?)", field="workload.trace")
    cfg = scenario.workload
    longest = cfg.prompt_len.max + cfg.output_len.max
    if tokens.size < longest and not cfg.wrap_trace:
        raise InputError(source, f"trace has {tokens.size:,} tokens, fewer than the longest prompt + output ({longest:,}); "
                         "use a longer trace, shorter lengths, or workload.wrap_trace: true", field="workload.trace")


def prepare(scenario: Scenario, source: str) -> Prepared:
    engram = scenario.model.engram
    with located(source, "hardware"):
        profile = load_profile(scenario.hardware.profile, scenario.hardware.link)
    with located(source, "workload.trace"):
        trace = load_trace(scenario.workload.trace)
    with located(source, "model.engram.tokenizer"):
        vocab = compressed_vocab(engram.tokenizer)
    compressed = "tokenizer" in trace.meta and trace.meta["tokenizer"] is None  # ids already compressed
    check_trace(source, scenario, np.asarray(trace.tokens), vocab.size if compressed else int(vocab.table.size))
    hashing = build_hashing(scenario.strategies.hashing, HashingSetup(engram, vocab.size, int(vocab.table[PAD_ID])))
    workload = build_workload(scenario, trace, hashing, vocab)
    tables = engram_tables(scenario, hashing)
    prepared = Prepared(scenario, source, profile, hashing, tables, workload, {})
    placement, cache, prefetch = strategies(prepared)
    check_tiers(source, placement, profile)
    prepared.hbm = hbm_items(scenario, tables, workload, placement, cache, prefetch)
    check_hbm(source, prepared.hbm, profile)
    return prepared


def strategies(prepared: Prepared, placement: StrategyChoice | None = None) -> tuple[Placement, Cache, Prefetch]:
    """Fresh placement, cache and prefetch strategies for one pass (caches start empty)."""
    setup, chosen = prepared.setup(), prepared.scenario.strategies
    return (build("placement", placement or chosen.placement, setup), build("cache", chosen.cache, setup),
            build("prefetch", chosen.prefetch, setup))


def planner(prepared: Prepared, placement: StrategyChoice | None = None, engram: bool = True) -> Planner:
    """The planner of one pass; `placement` overrides the scenario's, `engram=False` plans no Engram layer."""
    table_rows = {layer: t.rows for layer, t in prepared.tables.items()} if engram else {}
    return Planner(*strategies(prepared, placement), table_rows, prepared.scenario.model.backbone.layers)

"""Prepare a scenario once for any executor: resolve its names, build the hashing plugin and the
workload, check that its placement and HBM budget fit the hardware, size the KV cache, and make
the schedulers and planners of its passes.

Every check runs here, before a pass starts, so a scenario that cannot run fails with one
`InputError` line naming the file and the field to change.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from engramsim.errors import InputError
from engramsim.hardware.presets import load_profile, tier_names
from engramsim.hardware.profile import HardwareProfile
from engramsim.hbm import backbone_items, hbm_items, kv_blocks, kv_bytes_per_token, longest_sequence
from engramsim.plan import Planner
from engramsim.registry import build, build_hashing, build_scheduler, scheduler_class, scheduler_params
from engramsim.scenario import Node, Scenario, StrategyChoice, host_tables_bytes
from engramsim.schedule import Served, schedule_for
from engramsim.scheduler import Scheduler, SchedulerParams
from engramsim.steps import Step
from engramsim.strategies import PRICED_TIERS, Cache, Hashing, HashingSetup, Placement, Prefetch, SetupContext, TableInfo, Tier, Transport
from engramsim.tokenizer import compressed_vocab
from engramsim.traces.format import load_trace
from engramsim.workload import Workload, build_workload

GIB = 1 << 30
PAD_ID = 2  # raw id of the pad token before a sequence's start (ENGRAM.md step 2)
ALL_HBM = StrategyChoice(name="all-hbm")


@dataclass(frozen=True)
class KvCache:
    """The paged KV cache of each pass. The offloaded pass and the all-HBM baseline get what the
    configured pass's HBM items leave (so the baseline differs only in where rows come from: its
    hypothetical all-HBM tables are not charged to the KV cache); the no-Engram pass gets what a
    model without Engram would (no Engram item at all). A `kv_blocks` param gives every pass that many."""

    block_size: int  # tokens per block
    block_bytes: int
    blocks: int  # the offloaded pass and the all-HBM baseline
    blocks_without_engram: int  # the no-Engram pass
    usable_bytes: int  # gpu_memory_utilization x HBM


@dataclass
class Prepared:
    """A scenario with every name resolved, the workload built and the KV cache sized, ready for any executor."""

    scenario: Scenario
    source: str
    profile: HardwareProfile
    hashing: Hashing
    tables: dict[int, TableInfo]
    workload: Workload
    hbm: dict[str, int]  # what the configured pass keeps in HBM besides the KV cache, by item (see engramsim/hbm.py)
    kv: KvCache
    replicas: tuple[Workload, ...] = ()  # a node's GPUs 1.. (hardware.node): each one's own requests; GPU 0 serves `workload`

    @property
    def workloads(self) -> tuple[Workload, ...]:
        """Every GPU's workload: GPU 0's, then the node's other replicas'."""
        return (self.workload, *self.replicas)

    def replica(self, gpu: int) -> Prepared:
        """The scenario as GPU `gpu` of the node serves it: its own workload, no other replicas."""
        return replace(self, workload=self.workloads[gpu], replicas=())

    def setup(self) -> SetupContext:
        return SetupContext(self.scenario, self.tables, self.profile, self.scenario.run.seed)

    def scheduler(self, engram: bool = True) -> Scheduler:
        """A fresh serving engine (the scenario's scheduler plugin) for one pass, with that pass's KV
        cache: `engram=False` for the pass without Engram (see `KvCache`)."""
        return build_scheduler(self.scenario.strategies.scheduler, self.workload, self._kv_blocks(engram))

    def served(self, engram: bool = True) -> Served:
        """The serving engine of one simulated pass: a replay of the steps its scheduler serves
        (`engramsim/schedule.py`, served once for every pass with this KV cache) when they cannot
        depend on timing, else a fresh scheduler."""
        choice, max_steps = self.scenario.strategies.scheduler, self.scenario.run.max_steps
        scheduler = self.scheduler(engram)
        schedule = schedule_for(scheduler, (choice.model_dump_json(), self._kv_blocks(engram), max_steps), max_steps)
        return scheduler if schedule is None else schedule.replay()

    def _kv_blocks(self, engram: bool) -> int:
        return self.kv.blocks if engram else self.kv.blocks_without_engram


def engram_tables(scenario: Scenario, hashing: Hashing) -> dict[int, TableInfo]:
    row_bytes = scenario.model.engram.row_bytes
    return {
        layer: TableInfo(layer, hashing.rows_per_layer[layer], row_bytes, hashing.head_sizes[layer], hashing.offsets[layer])
        for layer in scenario.model.engram.layers
    }


TIER_FIELD = {Tier.CXL: "hardware.cxl", Tier.NVME: "hardware.nvme"}


def _size(nbytes: float) -> str:
    """Bytes as GiB, or MiB below a tenth of one (a small table is not '0.0 GiB')."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / (1 << 20):.2f} MiB"


def tier_capacity(profile: HardwareProfile, tier: Tier, node: Node | None = None) -> float | None:
    """Bytes a tier of this hardware holds; None for a CXL or NVMe tier it does not have. A node's
    host holds what `scenario.host_tables_bytes` says."""
    if tier == Tier.HBM:
        return profile.gpu.hbm_gib * GIB
    if tier == Tier.HOST:
        return host_tables_bytes(profile.host.dram_gib, node)
    found = profile.cxl if tier == Tier.CXL else profile.nvme
    return None if found is None else found.capacity_bytes


def _tier_name(profile: HardwareProfile, tier: Tier, node: Node | None = None) -> str:
    host = f"the host DRAM of {profile.host.name}"
    if node is not None and node.numa_nodes > 1:
        host = (f"the host DRAM of {node.numa_nodes} sockets ({profile.host.name})" if node.table_copies == "per-node" else
                f"the DRAM of each socket holding its copy ({profile.host.name})")
    return {Tier.HBM: f"the HBM of the {profile.gpu.name}", Tier.HOST: host,
            Tier.CXL: f"the CXL tier ({profile.cxl.name if profile.cxl else 'none'})",
            Tier.NVME: f"the NVMe tier ({profile.nvme.name if profile.nvme else 'none'})"}[tier]


def pinned_bytes(nbytes: int) -> int:
    """What torch's caching host allocator pins for `nbytes`: the next power of two (0 for 0)."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def _capacity_field(tier: Tier, node: Node | None) -> str:
    """The field to change when a tier cannot hold what is placed there: a copy per socket, or the placement."""
    return "hardware.node.table_copies" if tier == Tier.HOST and node is not None and node.table_copies == "per-numa" \
        and node.numa_nodes > 1 else "strategies.placement"


def check_tiers(source: str, placement: Placement, profile: HardwareProfile, transport: Transport | None = None,
                pinned_allocation: str = "registered", node: Node | None = None) -> None:
    """Refuse a placement whose params do not fit the scenario or ask more of a tier than it
    holds, one that uses a tier no executor prices or the hardware lacks, one that puts more in a
    tier than it holds (HBM is checked with everything else that lives there, `check_hbm`), and a
    transport that cannot reach a tier rows are placed in."""
    refused = placement.refusal()
    if refused is not None:
        raise InputError(source, refused[1], field=f"strategies.placement.params.{refused[0]}")
    for tier, (param, size) in placement.tier_budgets().items():
        capacity = tier_capacity(profile, tier)
        if capacity is None or size > capacity:
            holds = "which the hardware does not have" if capacity is None else f"which holds {_size(capacity)}"
            raise InputError(source, f"asks for {_size(size)} of {_tier_name(profile, tier)}, {holds}",
                             field=f"strategies.placement.params.{param}")
    used = placement.bytes_per_tier()
    unpriced = [tier.name for tier, size in used.items() if size > 0 and tier not in PRICED_TIERS]
    if unpriced:
        raise InputError(source, f"placement {placement.name!r} puts rows in {', '.join(unpriced)}, which no executor "
                         f"prices yet; supported tiers: {', '.join(t.name for t in PRICED_TIERS)}", field="strategies.placement")
    for tier in (Tier.CXL, Tier.NVME):
        if used.get(tier, 0) > 0 and tier_capacity(profile, tier) is None:
            presets = ", ".join(tier_names("cxl" if tier == Tier.CXL else "nvme"))
            raise InputError(source, f"placement {placement.name!r} puts {_size(used[tier])} in {tier.name}, but hardware "
                             f"{profile.name!r} has no {tier.name} tier; set {TIER_FIELD[tier]} (presets: {presets})",
                             field="strategies.placement")
    for tier in (Tier.HOST, Tier.CXL, Tier.NVME):
        capacity = tier_capacity(profile, tier, node)
        if capacity is not None and used.get(tier, 0) > capacity:
            raise InputError(source, f"Engram tables need {_size(used[tier])} in {_tier_name(profile, tier, node)}, which holds "
                             f"{_size(capacity)}", field=_capacity_field(tier, node))
    host = tier_capacity(profile, Tier.HOST, node)
    if pinned_allocation == "caching" and host is not None:
        pinned = sum(pinned_bytes(placement.layer_bytes(layer).get(Tier.HOST, 0)) for layer in placement.setup.tables)
        if pinned > host:
            raise InputError(source, f"Engram tables need {_size(used.get(Tier.HOST, 0))} in {_tier_name(profile, Tier.HOST, node)}, "
                             f"{_size(pinned)} once the caching allocator rounds each table up to a power of two, and it "
                             f"holds {_size(host)}; 'registered' pins them in place", field="hardware.pinned_allocation")
    if transport is not None:
        unreached = [tier for tier, size in used.items() if size > 0 and tier != Tier.HBM and tier not in transport.reaches]
        if unreached:
            names = ", ".join(t.name for t in unreached)
            raise InputError(source, f"transport {transport.name!r} cannot reach rows in {names} (placement {placement.name!r} "
                             f"puts {_size(sum(used[t] for t in unreached))} there); it reaches "
                             f"{', '.join(t.name for t in sorted(transport.reaches))}", field="strategies.transport")


def check_node(source: str, node: Node | None, profile: HardwareProfile) -> None:
    """A node shares its host's sockets, so its profile must say what one socket has (`socket`)."""
    if node is not None and node.shared and profile.socket is None:
        raise InputError(source, f"a node of {node.gpus} GPU(s) on {node.numa_nodes} socket(s) shares the host, but profile "
                         f"{profile.name!r} has no socket section (cores, interconnect_gbps, remote_latency_ratio); add one "
                         "or use a preset that has it (engramsim hw)", field="hardware.node")


def check_hbm(source: str, items: dict[str, int], profile: HardwareProfile) -> None:
    """Refuse weights that alone exceed the GPU's HBM, then items that together do, in one line
    naming what fills it and the field of the biggest."""
    capacity = profile.gpu.hbm_gib * GIB
    weights = items["backbone weights"]
    if weights > capacity:
        raise InputError(source, f"the backbone weights alone need {weights / GIB:.2f} GiB of HBM, the {profile.gpu.name} "
                         f"has {capacity / GIB:.2f} GiB", field="model.backbone")
    needed = sum(items.values())
    if needed <= capacity:
        return
    biggest = max(items, key=lambda k: items[k])
    parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in sorted(items.items(), key=lambda kv: -kv[1]) if size)
    raise InputError(source, f"the run needs {needed / GIB:.2f} GiB of HBM ({parts} GiB), the {profile.gpu.name} "
                     f"has {capacity / GIB:.2f} GiB", field=HBM_FIELDS[biggest])


HBM_FIELDS = {
    "backbone weights": "model.backbone", "warm-up activations": "workload.batching.max_num_batched_tokens",
    "reserved (CUDA context, workspaces)": "strategies.scheduler.params.reserved_gib", "Engram modules": "model.engram",
    "Engram tables in HBM": "strategies.placement", "Engram caches": "strategies.cache", "Engram staging buffers": "strategies.prefetch",
    "Engram staged rows": "strategies.prefetch",
}


def size_kv_cache(source: str, scenario: Scenario, items: dict[str, int], profile: HardwareProfile, params: SchedulerParams,
                  workload: Workload) -> KvCache:
    """The KV cache of each pass (`KvCache`), refused in one line when it cannot hold one sequence of
    the longest prompt + output (the engine could not make progress), or when `kv_blocks` asks for
    more blocks than fit."""
    capacity = profile.gpu.hbm_gib * GIB
    usable = params.gpu_memory_utilization * capacity
    block_bytes = kv_bytes_per_token(scenario.model.backbone) * params.block_size
    fit = kv_blocks(usable, items, block_bytes)
    longest = longest_sequence(workload)
    needed = -(-longest // params.block_size)
    field = "strategies.scheduler.params." + ("gpu_memory_utilization" if params.kv_blocks is None else "kv_blocks")
    found = (f"{params.gpu_memory_utilization:g} x {capacity / GIB:.2f} GiB of HBM less {sum(items.values()) / GIB:.2f} GiB "
             f"(weights, Engram, warm-up activations, reserved) holds {fit:,} KV blocks of {params.block_size} tokens")
    if params.kv_blocks is not None and params.kv_blocks > fit:
        raise InputError(source, f"{params.kv_blocks:,} KV blocks asked for, but {found}", field=field)
    blocks = fit if params.kv_blocks is None else params.kv_blocks
    if blocks < needed:
        have = found if params.kv_blocks is None else f"{blocks:,} KV blocks of {params.block_size} tokens"
        raise InputError(source, f"{have}, but the longest sequence ({longest:,} tokens cached: prompt + output - 1) needs {needed:,}",
                         field=field)
    reserved = items["reserved (CUDA context, workspaces)"]
    without = kv_blocks(usable, backbone_items(scenario, reserved, engram=False), block_bytes) if params.kv_blocks is None else blocks
    return KvCache(params.block_size, block_bytes, blocks, without, int(usable))


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


def check_prompts_fit(source: str, scenario: Scenario) -> None:
    """A scheduler that prefills whole prompts cannot serve one longer than its token budget."""
    cfg = scenario.workload
    if cfg.prompt_len.max > cfg.batching.max_num_batched_tokens and not scheduler_class(scenario.strategies.scheduler).chunks_prompts:
        raise InputError(source, f"prompts up to {cfg.prompt_len.max} tokens cannot fit max_num_batched_tokens "
                         f"{cfg.batching.max_num_batched_tokens} (the {scenario.strategies.scheduler.name} scheduler prefills "
                         "whole prompts; the vllm one chunks them)",
                         field="workload.prompt_len." + ("value" if cfg.prompt_len.dist == "fixed" else "high"))


class Workloads:
    """The hashing and the workloads (GPU 0's, then a node's replicas) of the last few scenarios, by
    what builds them: the Engram section, the hashing strategy, the workload section and the seed.
    A sweep worker passes one to `prepare`, so its points that differ only in hardware or strategies
    share one workload, and its lookups, hashed once (`Workload`'s memo), serve them all."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Hashing, list[Workload]]] = OrderedDict()

    @staticmethod
    def key(scenario: Scenario) -> str:
        """What a scenario's hashing and workloads depend on, as text."""
        parts = (scenario.model.engram, scenario.strategies.hashing, scenario.workload)
        return json.dumps([part.model_dump(mode="json") for part in parts] + [scenario.run.seed], sort_keys=True)

    def get(self, scenario: Scenario, build: Callable[[], Hashing]) -> tuple[Hashing, list[Workload]]:
        """The scenario's hashing and the workloads built so far (`build` makes the hashing on a miss)."""
        key = self.key(scenario)
        if key not in self._entries:
            self._entries[key] = (build(), [])
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return self._entries[key]


def prepare(scenario: Scenario, source: str, reuse: Workloads | None = None) -> Prepared:
    """`reuse`: a cache of hashings and workloads to take them from (and keep them in)."""
    engram = scenario.model.engram
    check_prompts_fit(source, scenario)
    with located(source, "hardware"):
        profile = load_profile(scenario.hardware.profile, scenario.hardware.link, scenario.hardware.cxl, scenario.hardware.nvme)
    with located(source, "workload.trace"):
        trace = load_trace(scenario.workload.trace)
    with located(source, "model.engram.tokenizer"):
        vocab = compressed_vocab(engram.tokenizer)
    compressed = "tokenizer" in trace.meta and trace.meta["tokenizer"] is None  # ids already compressed
    check_trace(source, scenario, np.asarray(trace.tokens), vocab.size if compressed else int(vocab.table.size))
    def new_hashing() -> Hashing:
        return build_hashing(scenario.strategies.hashing, HashingSetup(engram, vocab.size, int(vocab.table[PAD_ID])))
    hashing, workloads = (new_hashing(), []) if reuse is None else reuse.get(scenario, new_hashing)
    node = scenario.hardware.node
    gpus = node.gpus if node else 1
    for gpu in range(len(workloads), gpus):
        workloads.append(build_workload(scenario, trace, hashing, vocab, replica=gpu))
    workload, replicas = workloads[0], tuple(workloads[1:gpus])
    tables = engram_tables(scenario, hashing)
    setup = SetupContext(scenario, tables, profile, scenario.run.seed)
    with located(source, "strategies"):  # a plugin refusing its params (e.g. a predictor trained on the served tokens)
        placement, cache, prefetch = _strategies(setup)
    transport = build("transport", scenario.strategies.transport, setup)
    check_node(source, node, profile)
    check_tiers(source, placement, profile, transport, scenario.hardware.pinned_allocation, node)
    params = scheduler_params(scenario.strategies.scheduler)
    items = hbm_items(scenario, tables, workload, placement, cache, prefetch, transport, int(params.reserved_gib * GIB))
    check_hbm(source, items, profile)
    kv = size_kv_cache(source, scenario, items, profile, params, workload)
    for replica in replicas:  # each replica's longest sequence must fit the KV cache too
        size_kv_cache(source, scenario, items, profile, params, replica)
    return Prepared(scenario, source, profile, hashing, tables, workload, items, kv, replicas)


def _strategies(setup: SetupContext, placement: StrategyChoice | None = None) -> tuple[Placement, Cache, Prefetch]:
    chosen = setup.scenario.strategies
    return (build("placement", placement or chosen.placement, setup), build("cache", chosen.cache, setup),
            build("prefetch", chosen.prefetch, setup))


def strategies(prepared: Prepared, placement: StrategyChoice | None = None) -> tuple[Placement, Cache, Prefetch]:
    """Fresh placement, cache and prefetch strategies for one pass (caches start empty)."""
    return _strategies(prepared.setup(), placement)


def planner(prepared: Prepared, placement: StrategyChoice | None = None, engram: bool = True) -> Planner:
    """The planner of one pass; `placement` overrides the scenario's, `engram=False` plans no Engram layer."""
    table_rows = {layer: t.rows for layer, t in prepared.tables.items()} if engram else {}

    def references_to(step: Step, layer: int, rows: np.ndarray) -> int:  # deadline mode: references a dropped fetch's rows serve
        return int(np.count_nonzero(np.isin(prepared.workload.token_rows(step.positions)[layer], rows)))
    return Planner(*strategies(prepared, placement), table_rows, prepared.scenario.model.backbone.layers, references_to)

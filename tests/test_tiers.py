"""Tiers beyond host DRAM (CXL memory, NVMe), the tiered and per-order placements, and the
transports beyond staged and zero-copy (one copy per row, batched multi-layer staged, zero-copy
with SM interference, direct NVMe reads): physics by hand, capacities, and bad input."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim import kernels
from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.hardware.presets import load_profile, load_tier, tier_names
from engramsim.plan import Planner
from engramsim.plugins.placement.per_order import PerOrder, PerOrderParams
from engramsim.plugins.placement.tiered import Tiered, TieredParams
from engramsim.plugins.transport.nvme_direct import NVMeDirect
from engramsim.plugins.transport.row_copy import RowCopy
from engramsim.plugins.transport.staged import Staged
from engramsim.plugins.transport.staged_batched import StagedBatched
from engramsim.plugins.transport.zero_copy import ZeroCopy
from engramsim.plugins.transport.zero_copy_sm import ZeroCopySM, ZeroCopySMParams
from engramsim.records import RunOutcome, SpanKind
from engramsim.scenario_io import load_scenario
from engramsim.simulator.cost import RooflineCostModel
from engramsim.simulator.engine import Engine, simulate
from engramsim.strategies import Params, SetupContext, Stage, StageKind, TableInfo, Tier
from tests.test_engine import MS, IssueAt, ListScheduler, NoCache, ToyCost, make_step
from tests.test_errors import TINY, Case, _write, assert_refused
from tests.test_profiles import numbers_and_bare, numeric_leaves

ROOT = Path(__file__).resolve().parents[1]
TIERS_DIR = ROOT / "hardware" / "profiles" / "tiers"
NVME = {"name": "toy NVMe", "read_iops": 1e6, "read_latency_us": 100.0, "queue_depth": 64, "read_gbps": 7.0, "page_bytes": 4096,
        "drives": 2, "capacity_gib": 100.0}
CXL = {"name": "toy CXL", "load_latency_ns": 300.0, "rows_in_flight_per_thread": 2.0, "gbps": 10.0, "devices": 2, "capacity_gib": 64.0}
US = 1e-6


def model():
    return load_scenario(ROOT / "tests" / "golden" / "zero-copy.yaml").model


def roofline(nvme=None, cxl=None):
    return RooflineCostModel(model(), load_profile("h100-sxm", nvme=nvme, cxl=cxl))


# ---- tier physics by hand ------------------------------------------------------------------------
def test_nvme_rows_become_pages_and_rows_sharing_a_page_cost_one_read():
    rows = np.array([0, 1, 14, 15, 31, 100])  # 264 B rows: 15 to a 4 KiB page -> pages 0, 0, 0, 1, 2, 6
    assert kernels.nvme_pages(rows, 264, 4096) == 4
    assert kernels.nvme_pages(rows[::-1].copy(), 264, 4096) == 4  # speculative rows come after the sorted misses
    assert kernels.nvme_pages(np.arange(30) * 15, 264, 4096) == 30  # no two share a page: 30 x 4 KiB for 30 x 264 B
    assert kernels.nvme_pages(np.arange(3), 5000, 4096) == 6  # a row larger than a page costs its pages alone
    assert kernels.nvme_pages(np.empty(0, dtype=np.int64), 264, 4096) == 0


def test_nvme_read_is_iops_bound_at_the_queue_depth_or_bandwidth_bound():
    pages = 1280
    iops_bound = roofline(nvme=NVME)  # a drive at QD 64 / 100 us = 640 k IOPS (< 1 M rated): 1280 / (2 x 640 k) = 1 ms
    assert iops_bound.nvme_read_time(pages * 4096) == pytest.approx(100 * US + pages / (2 * 640e3))
    assert pages * 4096 / (2 * 7e9) < pages / (2 * 640e3)
    deep = roofline(nvme=NVME | {"queue_depth": 1024, "read_gbps": 2.0})  # 1 M IOPS: 0.64 ms; 5.24 MB at 2 x 2 GB/s: 1.31 ms
    assert deep.nvme_read_time(pages * 4096) == pytest.approx(100 * US + pages * 4096 / (2 * 2e9))
    assert deep.nvme_read_time(pages * 4096 - 100) == deep.nvme_read_time(pages * 4096)  # whole pages
    assert iops_bound.nvme_read_time(0) == 0.0
    assert kernels.nvme_iops(3.3e6, 128, 60e-6) == pytest.approx(128 / 60e-6)  # the 9550 preset at QD 128: 2.13 M
    assert kernels.nvme_iops(3.3e6, 256, 60e-6) == 3.3e6


def test_cxl_gather_is_latency_bound_for_small_rows_and_bandwidth_bound_for_large():
    cost = roofline(cxl=CXL)  # the h100-sxm host: 8 gather threads, 10 us per gather call
    small = 10 * US + 1000 * 300e-9 / (8 * 2.0)  # 18.75 us of latency over 16 loads in flight; bytes: 264 kB / 20 GB/s = 13 us
    assert cost.cxl_gather_time(1000, 264) == pytest.approx(small)
    assert cost.cxl_gather_time(1000, 4096) == pytest.approx(10 * US + 1000 * 4096 / 20e9)
    assert cost.cxl_gather_time(0, 264) == 0.0
    assert cost.cxl_latency() == pytest.approx(300e-9) and cost.cxl_wire_time(20_000) == pytest.approx(1 * US)


def test_cxl_loads_in_flight_follow_the_host_gather_rate_unless_given():
    """A thread keeps host.gather_rows_per_s x dram_latency_ns loads in flight to CXL as to DRAM, so a
    profile drawn with a slower host gathers from CXL more slowly too, and CXL never beats DRAM."""
    derived = {**CXL, "rows_in_flight_per_thread": None, "dram_latency_ns": 100.0}
    profile = load_profile("h100-sxm", cxl=derived)
    for rate in (5e6, 23e6, 46e6):
        host = profile.host.model_copy(update={"gather_rows_per_s": rate})
        cost = RooflineCostModel(model(), profile.model_copy(update={"host": host}))
        in_flight = rate * 100e-9
        assert cost.cxl_gather_time(1000, 64) == pytest.approx(10 * US + 1000 * 300e-9 / (8 * in_flight))
        assert cost.cxl_gather_time(1000, 64) > cost.gather_time(1000, 64)
    given = load_profile("h100-sxm", cxl={**derived, "rows_in_flight_per_thread": 2.0})
    assert given.cxl is not None and given.cxl.rows_in_flight(5e6) == 2.0  # given outright, it wins
    with pytest.raises(InputError, match="give dram_latency_ns"):
        load_profile("h100-sxm", cxl={**CXL, "rows_in_flight_per_thread": None})


def test_the_zero_copy_slowdown_defaults_to_the_sm_share_and_the_profile_overrides_it():
    assert roofline().zero_copy_slowdown() == pytest.approx(132 / 116)
    profile = load_profile("h100-sxm")
    custom = profile.model_copy(update={"gpu": profile.gpu.model_copy(update={"zero_copy_slowdown": 1.5})})
    assert RooflineCostModel(model(), custom).zero_copy_slowdown() == 1.5
    assert kernels.sm_share_slowdown(None, 16) == 1.0


# ---- presets -----------------------------------------------------------------------------------
def test_tier_presets_load_and_every_number_says_where_it_comes_from():
    assert tier_names() == ["cxl-cz120-x8", "cxl-x16-gen5", "nvme-gen4-9400", "nvme-gen5-9550"]
    for path in sorted(TIERS_DIR.glob("*.yaml")):
        kind = path.stem.split("-")[0]
        tier, provenance = load_tier(kind, path.stem)  # type: ignore[arg-type]
        assert provenance is not None and provenance.kind == "preset" and provenance.source
        found, bare = numbers_and_bare(path)
        assert found == numeric_leaves(yaml.safe_load(path.read_text())) and not bare, (path.name, bare)


def test_tier_datasheet_numbers():
    cz120, _ = load_tier("cxl", "cxl-cz120-x8")
    gen5, _ = load_tier("nvme", "nvme-gen5-9550")
    gen4, _ = load_tier("nvme", "nvme-gen4-9400")
    assert (cz120.gbps, cz120.capacity_gib, cz120.devices) == (36.0, 238.4, 4)
    assert (gen5.read_iops, gen5.read_gbps, gen5.read_latency_us, gen5.page_bytes) == (3.3e6, 14.0, 60.0, 4096)
    assert (gen4.read_iops, gen4.read_gbps) == (1.6e6, 7.0)


def test_the_readme_lists_every_tier_number():
    lines = (ROOT / "hardware" / "profiles" / "README.md").read_text().splitlines()

    def g(value: float) -> str:
        return f"{value / 1e6:g} M" if value >= 1e6 else f"{value:g}"
    for name in tier_names():
        (row,) = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith(f"| `{name}` |")]
        tier, _ = load_tier(name.split("-")[0], name)  # type: ignore[arg-type]
        numbers = ([tier.load_latency_ns, tier.dram_latency_ns, tier.gbps, tier.devices, tier.capacity_gib]
                   if name.startswith("cxl") else
                   [tier.read_iops, tier.read_latency_us, tier.queue_depth, tier.read_gbps, tier.page_bytes, tier.drives,
                    tier.capacity_gib])
        assert row[1] == tier.name and row[2:2 + len(numbers)] == [g(x) for x in numbers], name


def test_a_profile_without_tiers_dumps_as_before_and_one_with_tiers_says_so():
    plain = load_profile("h100-sxm").model_dump(mode="json")
    assert "cxl" not in plain and "nvme" not in plain and "zero_copy_slowdown" not in plain["gpu"]
    tiered = load_profile("h100-sxm", nvme={"preset": "nvme-gen5-9550", "drives": 4}, cxl="cxl-cz120-x8")
    dumped = tiered.model_dump(mode="json")
    assert dumped["nvme"]["drives"] == 4 and dumped["cxl"]["gbps"] == 36.0
    assert "nvme tier: Micron 9550" in tiered.provenance.source and "overridden: drives" in tiered.provenance.source
    scenario = load_scenario(ROOT / "tests" / "golden" / "zero-copy.yaml")
    assert "nvme" not in scenario.model_dump(mode="json")["hardware"]


def test_a_profile_file_names_its_tiers(tmp_path):
    data = yaml.safe_load((ROOT / "hardware" / "profiles" / "h200.yaml").read_text())
    data["nvme"], data["cxl"] = "nvme-gen4-9400", dict(CXL)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_profile(path)
    assert profile.nvme is not None and profile.nvme.read_gbps == 7.0 and profile.cxl is not None and profile.cxl.name == "toy CXL"


# ---- placements --------------------------------------------------------------------------------
def tables(sizes: dict[int, list[int]], row_bytes: int = 264) -> dict[int, TableInfo]:
    out = {}
    for layer, heads in sizes.items():
        p = np.array(heads, dtype=np.int64)
        out[layer] = TableInfo(layer, int(p.sum()), row_bytes, p, np.concatenate([[0], np.cumsum(p)[:-1]]).astype(np.int64))
    return out


def setup_with(tabs: dict[int, TableInfo], max_ngram: int = 4, heads: int = 2, **hardware) -> SetupContext:
    scenario = load_scenario(ROOT / "tests" / "golden" / "zero-copy.yaml",
                             [f"model.engram.max_ngram={max_ngram}", f"model.engram.heads={heads}"])
    return SetupContext(scenario, tabs, load_profile("h100-sxm", **hardware), 0)


def tier_counts(placement, tabs) -> dict[Tier, int]:
    counts: dict[Tier, int] = {}
    for layer, t in tabs.items():
        tiers = placement.tier_of(layer, np.arange(t.rows, dtype=np.int64))
        for tier, n in zip(*np.unique(tiers, return_counts=True)):
            counts[Tier(int(tier))] = counts.get(Tier(int(tier)), 0) + int(n)
    return counts


@settings(max_examples=60, deadline=None)
@given(heads=st.lists(st.lists(st.integers(1, 3000), min_size=6, max_size=6), min_size=1, max_size=3),
       budgets=st.lists(st.integers(0, 8000), min_size=3, max_size=3), order=st.permutations(["hbm", "host", "cxl", "nvme"]))
def test_the_tiered_placement_never_exceeds_a_budget_and_places_every_row(heads, budgets, order):
    tabs = tables({layer: h for layer, h in enumerate(heads, start=1)})
    total = sum(t.rows for t in tabs.values())
    gib = [b * 264 / (1 << 30) for b in budgets]  # budgets in rows, as GiB
    params = TieredParams(tiers=list(order), hbm_gib=gib[0], host_gib=gib[1], cxl_gib=gib[2], nvme_gib=None)
    placement = Tiered(params, setup_with(tabs, nvme=NVME, cxl=CXL))
    counts = tier_counts(placement, tabs)
    assert sum(counts.values()) == total
    assert {tier: n * 264 for tier, n in counts.items() if n} == {tier: b for tier, b in placement.bytes_per_tier().items() if b}
    budget_rows = {Tier.HBM: budgets[0], Tier.HOST: budgets[1], Tier.CXL: budgets[2]}
    last = {"hbm": Tier.HBM, "host": Tier.HOST, "cxl": Tier.CXL, "nvme": Tier.NVME}[order[-1]]
    for tier, rows in budget_rows.items():
        if tier != last:
            assert counts.get(tier, 0) <= rows, (tier, counts)
    rank = {tier: i for i, tier in enumerate(placement.order)}
    for layer, t in tabs.items():  # the lowest row ids sit in the fastest tiers
        ranks = np.vectorize(lambda x: rank[Tier(int(x))])(placement.tier_of(layer, np.arange(t.rows)))
        assert (np.diff(ranks) >= 0).all()


def test_the_tiered_placement_fills_the_fastest_tier_first_and_splits_tables_alike():
    tabs = tables({1: [1000] * 6, 14: [1000] * 6})
    half = 6000 * 264 / (1 << 30)  # half of all rows
    placement = Tiered(TieredParams(tiers=["host", "nvme"], host_gib=half), setup_with(tabs, nvme=NVME))
    for layer in (1, 14):  # each table half in DRAM (its first rows: 2- and 3-gram heads), half on NVMe
        tiers = placement.tier_of(layer, np.array([0, 2999, 3000, 5999]))
        assert tiers.tolist() == [Tier.HOST, Tier.HOST, Tier.NVME, Tier.NVME]
    assert placement.tier_budgets() == {Tier.HOST: ("host_gib", int(half * (1 << 30)))}


@pytest.mark.parametrize(("orders", "rest"), [([2], "host"), ([2, 4], "nvme"), ([3], "cxl"), ([], "host")])
def test_per_order_puts_exactly_the_chosen_orders_heads_in_hbm(orders, rest):
    heads = 2
    tabs = tables({1: [101, 103, 107, 109, 113, 127], 14: [131, 137, 139, 149, 151, 157]})  # orders 2, 3, 4 x 2 heads
    placement = PerOrder(PerOrderParams(hbm_orders=orders, rest=rest), setup_with(tabs, heads=heads, nvme=NVME, cxl=CXL))
    assert placement.refusal() is None
    expected_rest = {"host": Tier.HOST, "cxl": Tier.CXL, "nvme": Tier.NVME}[rest]
    for layer, t in tabs.items():
        tiers = placement.tier_of(layer, np.arange(t.rows))
        for k, (first, size) in enumerate(zip(t.offsets, t.head_sizes)):
            order = 2 + k // heads
            want = Tier.HBM if order in orders else expected_rest
            assert (tiers[first:first + size] == want).all(), (layer, k)
    in_hbm = sum(int(t.head_sizes[k]) for t in tabs.values() for k in range(6) if 2 + k // heads in orders) * 264
    assert placement.bytes_per_tier().get(Tier.HBM, 0) == in_hbm


def test_per_order_refuses_an_order_the_tables_do_not_have():
    tabs = tables({1: [101] * 6})
    refusal = PerOrder(PerOrderParams(hbm_orders=[2, 5]), setup_with(tabs)).refusal()
    assert refusal is not None and refusal[0] == "hbm_orders" and "max_ngram is 4" in refusal[1]


# ---- transports in the event model -------------------------------------------------------------
class TierCost(ToyCost):
    """ToyCost plus tiers: a CXL gather `cxl_s`, NVMe `nvme_latency_s` then `page_s` a page."""

    def __init__(self, cxl_s=0.0, nvme_latency_s=0.1 * MS, page_s=1 * US, **kw):
        super().__init__(**kw)
        self.cxl_s, self.nvme_latency_s, self.page_s = cxl_s, nvme_latency_s, page_s

    def cxl_gather_time(self, rows, row_bytes):
        return self.cxl_s

    def cxl_latency(self):
        return 0.0

    def cxl_wire_time(self, nbytes):
        return 0.0

    def nvme_latency(self):
        return self.nvme_latency_s

    def nvme_stream_time(self, nbytes):
        return -(-nbytes // 4096) * self.page_s


class On:
    """A placement putting every row in one tier."""

    name = "on"

    def __init__(self, tier):
        self.tier = tier

    def tier_of(self, layer, rows):
        return np.full(rows.shape, self.tier, dtype=np.uint8)

    def bytes_per_tier(self):
        return {self.tier: 1}


def transport(cls, params: Params | None = None, nvme=None):
    return cls(params or cls.Params(), SimpleNamespace(hardware=SimpleNamespace(nvme=SimpleNamespace(page_bytes=4096) if nvme else None)))


def run(cost, steps, transport, layers=(1,), blocks=3, tier=Tier.HOST, issue=None, row_bytes=100):
    tabs = {layer: SimpleNamespace(row_bytes=row_bytes) for layer in layers}
    placement = On(tier)
    engine = Engine(cost, tabs, blocks, transport, copy_engines=2, placement=placement)
    planner = Planner(placement, NoCache(), IssueAt(issue), dict.fromkeys(layers, 10**9), blocks)
    records, makespan = simulate(engine, ListScheduler(steps), planner)
    return RunOutcome(steps=records, spans=engine.spans, events=engine.env.event_count, link_busy_s=engine.link.busy_s,
                      makespan_s=makespan, output_tokens=0, prompt_tokens=0, ttft_s=np.empty(0), tpot_s=np.empty(0))


@pytest.mark.parametrize("rows", [1, 50, 400])
def test_one_copy_per_row_costs_rows_times_the_dma_latency(rows):
    cost = ToyCost(block_s=1 * MS, latency_s=6.5 * US, gbps=1.0)
    out = run(cost, [make_step(0, {1: rows})], transport(RowCopy))  # on demand: the stall is the whole fetch
    assert out.steps[0].layers[0].stall_s == pytest.approx(rows * 6.5 * US + rows * 100 / 1e9)
    staged = run(cost, [make_step(0, {1: rows})], transport(Staged))
    assert staged.steps[0].layers[0].stall_s == pytest.approx(6.5 * US + rows * 100 / 1e9)
    assert RowCopy.Params is Params and transport(RowCopy).stages(7, 10) == [Stage(StageKind.H2D, 7, 70, copies=7)]


def test_batched_staged_issues_one_gather_and_one_dma_for_every_layer_issued_together():
    cost = ToyCost(block_s=1 * MS, latency_s=0.1 * MS, gbps=1.0, gather_s=0.3 * MS)
    steps = [make_step(0, {1: 1000, 2: 3000})]
    batched = run(cost, steps, transport(StagedBatched), layers=(1, 2), issue=0)
    apart = run(cost, steps, transport(Staged), layers=(1, 2), issue=0)
    together = 0.3 * MS + 0.1 * MS + 4000 * 100 / 1e9  # one gather call, one DMA latency, all the bytes
    ready = [layer.ready_s for layer in batched.steps[0].layers]
    assert ready == pytest.approx([together, together])
    h2d = sorted((s for s in batched.spans if s.kind == SpanKind.H2D), key=lambda s: s.start_s)
    assert [s.layer for s in h2d] == [1, 2] and h2d[0].end_s == h2d[1].start_s  # one transfer split by bytes
    assert [s.bytes for s in h2d] == [100_000, 300_000] and h2d[1].end_s == pytest.approx(together)
    assert batched.link_busy_s == pytest.approx(4000 * 100 / 1e9) == pytest.approx(sum(s.seconds for s in h2d))
    assert len([s for s in batched.spans if s.kind == SpanKind.GATHER]) == 2  # one gather, one span per layer
    # staged apart: two gather calls and two DMA latencies; the second layer's rows land later
    assert apart.steps[0].layers[1].ready_s == pytest.approx(0.3 * MS * 2 + 0.1 * MS + 3000 * 100 / 1e9)
    assert apart.steps[0].layers[1].ready_s > together


def test_sm_interference_slows_compute_only_while_the_gather_runs():
    cost = ToyCost(block_s=1 * MS, latency_s=0.0, gbps=1.0)  # 1,000,000 B: 1 ms on the link
    steps = [make_step(0, {2: 10_000})]
    slowed = transport(ZeroCopySM, ZeroCopySMParams(slowdown=2.0))
    ahead = run(cost, steps, slowed, layers=(2,), issue=0)
    plain = run(cost, steps, transport(ZeroCopy), layers=(2,), issue=0)
    # blocks 0-1 (2 ms of work) beside a 1 ms gather at half speed: 0.5 ms done by 1 ms, 1.5 ms more; then block 2
    assert plain.makespan_s == pytest.approx(3 * MS)
    assert ahead.makespan_s == pytest.approx(3.5 * MS)
    blocks = [s for s in ahead.spans if s.kind == SpanKind.BLOCKS]
    assert blocks[0].end_s == pytest.approx(2.5 * MS) and blocks[1].seconds == pytest.approx(1 * MS)
    # on demand the stream waits while the gather runs: nothing to slow
    assert run(cost, steps, slowed, layers=(2,)).makespan_s == pytest.approx(run(cost, steps, transport(ZeroCopy), layers=(2,)).makespan_s)
    assert run(cost, steps, slowed, layers=(2,)).makespan_s == pytest.approx(4 * MS)


def test_direct_nvme_skips_the_host_hop():
    cost = TierCost(block_s=1 * MS, latency_s=0.05 * MS, gbps=1.0, gather_s=0.2 * MS, nvme_latency_s=0.1 * MS, page_s=2 * US)
    steps = [make_step(0, {1: 150})]  # rows 0..149 of 100 B: 40 to a page, 4 pages
    direct = run(cost, steps, transport(NVMeDirect, nvme=True), tier=Tier.NVME)
    staged = run(cost, steps, transport(Staged, nvme=True), tier=Tier.NVME)
    kinds = {s.kind for s in direct.spans if s.kind.lane not in ("compute", "stall")}
    assert kinds == {SpanKind.NVME_DIRECT}  # no host read, no gather, no second copy
    assert {SpanKind.NVME_READ, SpanKind.GATHER, SpanKind.H2D} <= {s.kind for s in staged.spans}
    (span,) = [s for s in direct.spans if s.kind == SpanKind.NVME_DIRECT]
    assert span.bytes == 4 * 4096  # whole pages cross the link
    pages_s = max(4 * 2 * US, 4 * 4096 / 1e9)
    assert direct.steps[0].layers[0].stall_s == pytest.approx(0.1 * MS + pages_s)
    assert staged.steps[0].layers[0].stall_s == pytest.approx(0.1 * MS + 4 * 2 * US + 0.2 * MS + 0.05 * MS + 150 * 100 / 1e9)
    assert direct.link_busy_s == pytest.approx(span.seconds)


def test_transports_pipeline_rows_by_tier():
    rows = {Tier.HOST: np.arange(10), Tier.CXL: np.arange(5), Tier.NVME: np.arange(0, 300, 15)}  # 20 NVMe rows, 264 B: 15 a page
    staged = transport(Staged, nvme=True).fetch_stages(rows, 264)
    assert staged == [Stage(StageKind.NVME_READ, 20, 20 * 4096), Stage(StageKind.GATHER, 30, 30 * 264),
                      Stage(StageKind.CXL_GATHER, 5, 5 * 264), Stage(StageKind.H2D, 35, 35 * 264)]
    direct = transport(NVMeDirect, nvme=True).fetch_stages(rows, 264)
    assert direct[0] == Stage(StageKind.NVME_DIRECT, 20, 20 * 4096) and direct[-1] == Stage(StageKind.H2D, 15, 15 * 264)
    assert transport(ZeroCopy).fetch_stages({Tier.CXL: np.arange(5)}, 264) == [Stage(StageKind.ZERO_COPY, 5, 1320, source=Tier.CXL)]
    with pytest.raises(ValueError, match="cannot reach rows in NVME"):
        transport(ZeroCopy).fetch_stages(rows, 264)
    with pytest.raises(ValueError, match="cannot reach rows in NVME"):
        transport(RowCopy).fetch_stages(rows, 264)


def test_a_tiered_scenario_runs_and_each_tier_shows_on_the_timeline(tmp_path):
    scenario = _scenario_file(tmp_path, placement={"name": "tiered", "params": {"tiers": ["host", "cxl", "nvme"], "host_gib": 0.0001,
                                                                                 "cxl_gib": 0.0001}})
    assert main(["run", scenario, "--out", str(tmp_path / "o"), "--quiet"]) == 0
    import json
    timeline = json.loads((tmp_path / "o" / "timeline.json").read_text())
    names = {e["args"]["name"] for e in timeline["traceEvents"] if e.get("name") == "thread_name"}
    assert "storage" in names
    kinds = {e["name"].split(" ")[0] for e in timeline["traceEvents"] if e.get("ph") == "X"}
    assert kinds  # spans were drawn
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["hardware"]["nvme"]["name"].startswith("Micron 9550") and results["summary"]["engram_stall_ms_total"] > 0


# ---- bad input: one line naming file and field, exit 2, nothing written ---------------------------
def _scenario_file(d: Path, placement=None, transport="staged", hardware=None) -> str:
    data = dict(TINY)
    data["hardware"] = hardware or {"profile": "h100-sxm", "nvme": "nvme-gen5-9550", "cxl": "cxl-cz120-x8"}
    data["strategies"] = {"placement": placement or "all-host", "transport": transport}
    return str(_write(d / "tiers.yaml", yaml.safe_dump(data)))


def _run_with(placement=None, transport="staged", hardware=None, *extra: str):
    return lambda d: ["run", _scenario_file(d, placement, transport, hardware), "--out", str(d / "out"), *extra]


ON_NVME = {"name": "tiered", "params": {"tiers": ["nvme"]}}
CASES: dict[str, Case] = {
    "a capacity larger than host DRAM": Case(_run_with({"name": "tiered", "params": {"host_gib": 5000}}),
                                             ("tiers.yaml", "strategies.placement.params.host_gib", "holds 1024.0 GiB")),
    "a capacity larger than the NVMe tier": Case(_run_with({"name": "tiered", "params": {"nvme_gib": 1e6}}),
                                                 ("strategies.placement.params.nvme_gib", "NVMe tier", "holds")),
    "a capacity on a tier the hardware lacks": Case(_run_with({"name": "tiered", "params": {"cxl_gib": 1}}, hardware="h100-sxm"),
                                                    ("strategies.placement.params.cxl_gib", "does not have")),
    "rows on NVMe, no NVMe tier": Case(_run_with(ON_NVME, hardware="h100-sxm"),
                                       ("tiers.yaml", "strategies.placement", "no NVME tier", "hardware.nvme", "nvme-gen5-9550")),
    "tables larger than every tier": Case(_run_with({"name": "tiered", "params": {"tiers": ["host", "nvme"], "host_gib": 0.00001}},
                                                    hardware={"profile": "h100-sxm", "nvme": {"preset": "nvme-gen5-9550",
                                                                                                "capacity_gib": 0.00001}}),
                                          ("strategies.placement", "in the NVMe tier", "holds")),
    "zero-copy cannot reach NVMe": Case(_run_with(ON_NVME, "zero-copy"),
                                        ("tiers.yaml", "strategies.transport", "cannot reach rows in NVME", "reaches HOST, CXL")),
    "one copy per row cannot reach NVMe": Case(_run_with(ON_NVME, "row-copy"), ("strategies.transport", "row-copy", "NVME")),
    "an unknown tier": Case(_run_with({"name": "tiered", "params": {"tiers": ["hbm", "tape"]}}),
                            ("strategies.placement.params.tiers", "tape")),
    "an unknown rest tier": Case(_run_with({"name": "per-order", "params": {"rest": "tape"}}),
                                 ("strategies.placement.params.rest", "tape")),
    "a tier twice": Case(_run_with({"name": "tiered", "params": {"tiers": ["host", "host"]}}), ("strategies.placement.params.tiers",)),
    "an order the tables lack": Case(_run_with({"name": "per-order", "params": {"hbm_orders": [4]}}),
                                     ("strategies.placement.params.hbm_orders", "max_ngram is 3")),
    "an unknown tier preset": Case(_run_with(hardware={"profile": "h100-sxm", "nvme": "nvme-gen9"}),
                                   ("tiers.yaml", "hardware.nvme", "nvme-gen9", "nvme-gen5-9550")),
    "a bad inline tier field": Case(_run_with(hardware={"profile": "h100-sxm", "nvme": {"preset": "nvme-gen5-9550", "drives": 0}}),
                                    ("tiers.yaml", "hardware.nvme.drives", "greater than 0")),
    "an inline tier missing a field": Case(_run_with(hardware={"profile": "h100-sxm", "cxl": {"gbps": 30}}),
                                           ("tiers.yaml", "hardware.cxl", "missing")),
    "a slowdown below 1": Case(_run_with(transport={"name": "zero-copy-sm", "params": {"slowdown": 0.5}}),
                               ("strategies.transport.params.slowdown", "greater than or equal to 1")),
    "the CPU backend and a CXL tier": Case(_run_with({"name": "tiered", "params": {"tiers": ["cxl"]}}, "staged", None,
                                                     "--backend", "cpu"),
                                           ("strategies.placement", "real backends", "CXL")),
    "the CPU backend and one copy per row": Case(_run_with(None, "row-copy", None, "--backend", "cpu"),
                                                 ("strategies.transport", "row-copy")),
    "the CPU backend and batched layers": Case(_run_with(None, "staged-batched", None, "--backend", "cpu"),
                                               ("strategies.transport", "batched together")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_left_behind(name, tmp_path, monkeypatch, capsys):
    assert_refused(CASES[name], tmp_path, monkeypatch, capsys)


def test_every_new_plugin_has_params_a_docstring_and_is_registered():
    from engramsim import registry
    for kind, name in [("placement", "tiered"), ("placement", "per-order"), ("transport", "row-copy"),
                       ("transport", "staged-batched"), ("transport", "zero-copy-sm"), ("transport", "nvme-direct")]:
        cls = registry.get(kind, name)
        assert registry.summary(cls) and re.match(r"^[A-Z]", registry.summary(cls)), name
        assert issubclass(registry.params_model(cls), Params)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_the_comparison_scenarios_pass_every_check(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(path)]) == 0
    assert not any(tmp_path.iterdir())


TIER_VARIANTS = {
    "staged over host, CXL and NVMe": ["strategies.transport=staged"],
    "batched over host, CXL and NVMe": ["strategies.transport=staged-batched"],
    "direct NVMe": ["strategies.transport=nvme-direct"],
    "zero-copy-sm over host and CXL": ["strategies.transport=zero-copy-sm", "strategies.placement.params.tiers=[host, cxl]"],
    "one copy per row over host and CXL": ["strategies.transport=row-copy", "strategies.placement.params.tiers=[host, cxl]"],
    "per-order, 2-grams in HBM": ["strategies.placement={name: per-order, params: {hbm_orders: [2], rest: nvme}}"],
}


@pytest.fixture(scope="module")
def tier_outcomes(tmp_path_factory):
    from engramsim.runner import simulate_run
    from engramsim.session import prepare
    d = tmp_path_factory.mktemp("tiers")
    path = Path(_scenario_file(d, {"name": "tiered", "params": {"tiers": ["host", "cxl", "nvme"], "host_gib": 0.0002,
                                                                "cxl_gib": 0.0002}}))
    out = {}
    for name, sets in TIER_VARIANTS.items():
        prepared = prepare(load_scenario(path, ["model.engram.layers=[1, 2]", "workload.requests=6", *sets]), str(path))
        out[name] = simulate_run(prepared)
    return out


@pytest.mark.parametrize("variant", list(TIER_VARIANTS))
def test_the_invariants_hold_over_tiers_and_transports(tier_outcomes, variant):
    """The link is busy exactly its spans, one transfer at a time; an Engram layer starts after
    its rows land; drives and gather threads serve one batch at a time; every step's needed rows
    are served once (placed in HBM or fetched)."""
    outcome = tier_outcomes[variant]
    link = sorted((s.start_s, s.end_s) for s in outcome.spans if s.kind.on_link)
    assert link and outcome.link_busy_s == pytest.approx(sum(e - s for s, e in link), rel=1e-12)
    for kinds in ((SpanKind.NVME_READ,), (SpanKind.GATHER, SpanKind.CXL_GATHER)):
        busy = [(s.start_s, s.end_s) for s in outcome.spans if s.kind in kinds]
        merged: dict[tuple[float, float], int] = {}
        for span in busy:  # a batched leg's span is split among the fetches it serves: put it back together
            merged[span] = 1
        spans = sorted(merged)
        joined = [list(spans[0])] if spans else []
        for s, e in spans[1:]:
            if s == joined[-1][1]:
                joined[-1][1] = e
            else:
                joined.append([s, e])
        for (_, e0), (s1, _) in zip(joined, joined[1:]):
            assert s1 >= e0 - 1e-12
    for (_, e0), (s1, _) in zip(link, link[1:]):
        assert s1 >= e0 - 1e-15
    ready = {}
    for step in outcome.steps:
        for rec in step.layers:
            assert rec.ready_s >= rec.issue_s - 1e-15
            assert rec.rows_placed_hbm + rec.cache_hits + rec.rows_missed == rec.rows_unique
            ready[(step.index, rec.layer)] = rec.ready_s
    for span in outcome.spans:
        assert span.end_s >= span.start_s
        if span.kind is SpanKind.ENGRAM:
            assert span.start_s >= ready[(span.step, span.layer)] - 1e-12


def test_direct_nvme_reads_land_whole_pages_in_the_staging_slots(tmp_path):
    """nvme-direct lands each NVMe row with its 4 KiB page, so its staging slots are sized in pages
    (the KV cache gets that much less); with no rows on NVMe they are the staged transport's.
    Guards: landing pages that take HBM the budget never counted."""
    from engramsim.session import prepare

    def staging(placement, transport: str) -> int:
        path = _scenario_file(tmp_path, placement, transport)
        return prepare(load_scenario(path), path).hbm["Engram staging buffers"]

    row_bytes = TINY["model"]["engram"]["head_dim"] * 2  # bf16
    assert 0 < row_bytes < 4096
    assert staging(ON_NVME, "nvme-direct") == staging(ON_NVME, "staged") // row_bytes * 4096
    assert staging("all-host", "nvme-direct") == staging("all-host", "staged")


def test_the_caching_allocator_counts_each_host_table_rounded_up_to_a_power_of_two():
    """Three production-shaped layers of ~300 GiB each in a 1 TiB host: 900 GiB registered in place
    fit; through torch's caching host allocator each pins 512 GiB, 1.5 TiB in all, refused in one
    line naming hardware.pinned_allocation. Guards: a host check that passes tables the engine's
    allocator cannot pin."""
    from engramsim.errors import InputError
    from engramsim.session import pinned_bytes, prepare
    assert [pinned_bytes(n) for n in (0, 1, 3, 4, 5, 300 << 30)] == [0, 1, 4, 4, 8, 512 << 30]
    path = ROOT / "scenarios" / "compare" / "production-h200.yaml"
    sets = ["model.engram.layers=[1, 7, 14]", "model.engram.rows_per_head=50000000", "workload.requests=4"]
    prepared = prepare(load_scenario(path, sets), str(path))
    assert 850 << 30 < sum(t.bytes for t in prepared.tables.values()) < 1024 << 30
    with pytest.raises(InputError, match="rounds each table up to a power of two") as refused:
        prepare(load_scenario(path, [*sets, "hardware.pinned_allocation=caching"]), str(path))
    assert refused.value.field == "hardware.pinned_allocation" and "885.1 GiB" in str(refused.value) and "1536.0 GiB once" in str(refused.value)

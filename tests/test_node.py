"""A node of several GPUs sharing one host: the fabric's fair shares by hand and as a property,
and the node's passes (what is shared, what is remote, what one GPU alone still gives)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.records import SpanKind
from engramsim.runner import simulate_run
from engramsim.scenario import Node, socket_of, switch_of
from engramsim.scenario_io import scenario_from_dict
from engramsim.session import ALL_HBM, prepare
from engramsim.simulator.cost import RooflineCostModel
from engramsim.simulator.engine import table_shares
from engramsim.simulator.fabric import Fabric, Flow, fill
from engramsim.strategies import Stage, StageKind
from tests.test_errors import TINY, _profile_with

# One Engram layer of 4 KiB rows fetched on demand: enough bytes per step that links and DRAM matter.
HEAVY = TINY | {
    "model": {**TINY["model"], "engram": {"layers": [1], "heads": 2, "head_dim": 1024, "dtype": "fp32", "rows_per_head": 20011, "hc_mult": 1}},
    "workload": {**TINY["workload"], "requests": 16, "prompt_len": {"dist": "uniform", "low": 64, "high": 128}},
    "strategies": {"placement": "all-host", "cache": "none", "prefetch": "on-demand", "transport": "staged"},
}


def node_pass(node: dict | None, *sets: str, data: dict = HEAVY):
    scenario = scenario_from_dict(data, "s.yaml", [*([f"hardware.node={json.dumps(node)}"] if node else []), *sets])
    prepared = prepare(scenario, "s.yaml")
    return prepared, simulate_run(prepared)


# ---- the fabric -----------------------------------------------------------------------------------
def test_fair_shares_by_hand():
    alone = Flow(1.0, {"x": 50.0})
    fill([alone], {"x": 100.0})
    assert alone.speed == 1.0  # room to spare: solo speed
    a, b = Flow(1.0, {"x": 60.0}), Flow(1.0, {"x": 60.0})
    fill([a, b], {"x": 100.0})
    assert a.speed == b.speed == pytest.approx(100 / 120)  # one full capacity: both slow alike
    # y is shared three ways; a is held there at 1/3 and leaves x's rest to b
    a, b, c, d = Flow(1, {"x": 100, "y": 100}), Flow(1, {"x": 100}), Flow(1, {"y": 100}), Flow(1, {"y": 100})
    fill([a, b, c, d], {"x": 100.0, "y": 100.0})
    assert [f.speed for f in (a, c, d)] == pytest.approx([1 / 3] * 3)
    assert b.speed == pytest.approx(2 / 3)


def test_a_flow_joining_halfway_slows_both_from_then_on():
    env = simpy.Environment()
    fabric = Fabric(env, {"x": 10.0})
    ends = {}

    def flow(name, start):
        yield env.timeout(start)
        yield from fabric.run(1.0, {"x": 10.0})
        ends[name] = env.now
    env.process(flow("a", 0.0))
    env.process(flow("b", 0.5))
    env.run()
    assert ends["a"] == pytest.approx(1.5)  # half alone, the other half at half speed
    assert ends["b"] == pytest.approx(2.0)  # half its work shared until 1.5, the rest alone
    assert fabric.flows == []


def test_flows_ending_together_and_empty_flows_end_on_time():
    env = simpy.Environment()
    fabric = Fabric(env, {"x": 10.0})
    ends = {}

    def flow(name, start, seconds):
        yield env.timeout(start)
        yield from fabric.run(seconds, {"x": 10.0})
        ends[name] = env.now
    env.process(flow("a", 0.0, 1.0))
    env.process(flow("b", 0.0, 1.0))  # both at half speed, both done at 2
    env.process(flow("empty", 0.5, 0.0))
    env.process(flow("late", 1000.0, 1e-3))  # far along the clock: no extra wake-ups past its end
    env.run()
    assert ends["a"] == pytest.approx(2.0) and ends["b"] == pytest.approx(2.0) and ends["empty"] == 0.5
    assert ends["late"] == pytest.approx(1000.001)
    assert fabric.flows == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("xyz"), st.floats(0.1, 100.0), min_size=1), min_size=1, max_size=8),
       st.fixed_dictionaries({k: st.floats(1.0, 200.0) for k in "xyz"}))
def test_shares_never_overfill_and_every_slowed_flow_meets_a_full_capacity(demands, capacities):
    flows = [Flow(1.0, d) for d in demands]
    fill(flows, capacities)
    drawn = {name: sum(f.demands.get(name, 0.0) * f.speed for f in flows) for name in capacities}
    for name, capacity in capacities.items():
        assert drawn[name] <= capacity * (1 + 1e-6)
    for f in flows:
        assert 0 < f.speed <= 1.0
        if f.speed < 1.0:  # max-min: held back only where a capacity is full (and it is among the fastest there)
            full = [n for n in f.demands if drawn[n] >= capacities[n] * (1 - 1e-6)]
            assert full
            assert any(f.speed >= max(g.speed for g in flows if n in g.demands) * (1 - 1e-6) for n in full)


# ---- the node ------------------------------------------------------------------------------------
def test_gpus_split_evenly_over_sockets_and_fill_each_sockets_switches():
    six = Node(gpus=6, numa_nodes=2, gpus_per_switch=2)
    assert [(socket_of(g, six), switch_of(g, six)) for g in range(6)] == [(0, 0), (0, 0), (0, 1), (1, 2), (1, 2), (1, 3)]
    lone = Node(gpus=1, numa_nodes=2, gpus_per_switch=4)  # a switch never spans sockets; one may hold fewer than asked
    assert (socket_of(0, lone), switch_of(0, lone)) == (0, 0)


def test_one_gpu_on_one_socket_is_the_single_gpu_model():
    _, alone = node_pass(None)
    _, one = node_pass({"gpus": 1})
    assert one.gpus == ()  # nothing shared: the single-GPU path itself
    assert (one.makespan_s, one.output_tokens, one.events) == (alone.makespan_s, alone.output_tokens, alone.events)
    _, seated = node_pass({"gpus": 1, "numa_nodes": 2, "table_copies": "per-numa"})  # through a Seat, nothing remote
    assert len(seated.gpus) == 1 and seated.makespan_s == pytest.approx(alone.makespan_s, rel=1e-9)
    assert seated.output_tokens == alone.output_tokens and seated.link_busy_s == pytest.approx(alone.link_busy_s, rel=1e-9)


def test_each_gpu_serves_its_own_replica_and_uncontended_gpus_run_as_if_alone():
    """A host with room to spare (one GPU per switch, a table copy per socket) gives every GPU the
    time it would take alone; GPU 0 serves the scenario's own requests, the others their own draws."""
    prepared, node = node_pass({"gpus": 2, "numa_nodes": 2, "table_copies": "per-numa"})
    _, alone = node_pass(None)
    assert len(node.gpus) == 2 and node.output_tokens == sum(g.output_tokens for g in node.gpus)
    assert node.gpus[0].output_tokens == alone.output_tokens
    assert node.gpus[0].makespan_s == pytest.approx(alone.makespan_s, rel=1e-9)
    assert not np.array_equal(prepared.workloads[1].requests.prompt_len, prepared.workload.requests.prompt_len)
    single = prepared.replica(1)
    hardware = single.scenario.hardware.model_copy(update={"node": None})
    alone_1 = simulate_run(replace(single, scenario=single.scenario.model_copy(update={"hardware": hardware})))
    assert alone_1.makespan_s == pytest.approx(node.gpus[1].makespan_s, rel=1e-9)


# 128 B rows: the gather is latency-bound (HEAVY's 4 KiB rows are bound by DRAM bandwidth)
LIGHT = HEAVY | {"model": {**HEAVY["model"], "engram": {**HEAVY["model"]["engram"], "head_dim": 64, "dtype": "bf16"}}}


@pytest.mark.parametrize("data", [LIGHT, HEAVY], ids=["latency-bound", "dram-bound"])
def test_a_table_interleaved_over_two_sockets_gathers_half_its_rows_at_remote_latency(data):
    """Half the rows of a copy interleaved over two sockets are remote: the rows' latency part of the
    gather stretches by 1 + 0.5 x (ratio - 1), its DRAM time does not."""
    prepared, node = node_pass({"gpus": 1, "numa_nodes": 2}, data=data)
    cost = RooflineCostModel(prepared.scenario.model, prepared.profile)
    stretch = 1 + 0.5 * (prepared.profile.socket.remote_latency_ratio - 1)
    row_bytes = prepared.tables[1].row_bytes
    gathers = [s for s in node.gpus[0].spans if s.kind == SpanKind.GATHER]
    assert gathers
    latency_bound = 0
    for span in gathers:
        rows = span.bytes // row_bytes
        local, latency = cost.gather_time(rows, row_bytes), cost.gather_latency_time(rows)
        assert span.seconds == pytest.approx(max(local, cost.gather_overhead() + latency * stretch), rel=1e-9)
        latency_bound += span.seconds > local * (1 + 1e-6)
    assert (latency_bound == len(gathers)) if data is LIGHT else (latency_bound == 0)
    _, per_numa = node_pass({"gpus": 1, "numa_nodes": 2, "table_copies": "per-numa"}, data=data)
    assert per_numa.makespan_s < node.makespan_s if data is LIGHT else per_numa.makespan_s <= node.makespan_s


def test_each_leg_reads_the_table_or_the_staging_an_earlier_leg_filled():
    g, h, z = StageKind.GATHER, StageKind.H2D, StageKind.ZERO_COPY
    assert table_shares([Stage(g, 10, 1), Stage(h, 10, 1)]) == [1.0, 0.0]  # staged: the DMA reads staging
    assert table_shares([Stage(z, 10, 1)]) == [1.0]  # zero-copy reads the table
    assert table_shares([Stage(StageKind.NVME_READ, 4, 1), Stage(g, 10, 1), Stage(StageKind.CXL_GATHER, 3, 1), Stage(h, 13, 1)]) \
        == [1.0, 0.6, 1.0, 0.0]  # the gather packs 4 rows of NVMe pages and 6 of the table
    assert table_shares([Stage(StageKind.NVME_DIRECT, 5, 1)]) == [1.0]


def test_a_gather_of_host_and_nvme_rows_pays_remote_latency_on_its_host_rows_only(tmp_path):
    tiered = ["hardware.nvme=nvme-gen5-9550", "strategies.placement={name: tiered, params: {tiers: [host, nvme], host_gib: 0.0004}}"]
    gather_s = {}
    for copies in ("per-node", "per-numa"):
        _, node = node_pass({"gpus": 1, "numa_nodes": 2, "table_copies": copies}, *tiered, data=LIGHT)
        gather_s[copies] = sum(s.seconds for s in node.gpus[0].spans if s.kind == SpanKind.GATHER)
        assert any(s.kind == SpanKind.NVME_READ for s in node.gpus[0].spans)
    assert gather_s["per-node"] > gather_s["per-numa"]


def test_gpus_behind_one_switch_share_its_uplink():
    """Two GPUs fetching at once through one switch take longer than through two; the node's
    throughput is both GPUs' tokens over the last one's end, and link utilisation stays per link."""
    slow_link = ["hardware.link=pcie-gen3-x16"]
    _, own = node_pass({"gpus": 2, "gpus_per_switch": 1}, *slow_link)
    _, shared = node_pass({"gpus": 2, "gpus_per_switch": 2}, *slow_link)
    assert shared.makespan_s > own.makespan_s
    assert sum(g.link_busy_s for g in shared.gpus) > sum(g.link_busy_s for g in own.gpus)  # a shared uplink holds each link longer
    assert shared.link_busy_s == pytest.approx(sum(g.link_busy_s for g in shared.gpus) / 2)
    assert shared.throughput_tok_s == pytest.approx(shared.output_tokens / max(g.makespan_s for g in shared.gpus))


def test_a_socket_short_of_cores_slows_the_replicas_gathers(tmp_path):
    """With cores for one gather's threads, two GPUs' gathers running at once share them: both slow."""
    _, roomy = node_pass({"gpus": 2})
    _, tight = node_pass({"gpus": 2}, f"hardware.profile={_profile_with(tmp_path, 'socket', 'cores', 8)}")  # 8 gather threads
    gather = [sum(s.seconds for s in g.spans if s.kind == SpanKind.GATHER) for g in (roomy, tight)]
    assert gather[1] > gather[0]


def test_a_copy_per_socket_must_fit_one_socket_and_an_interleaved_copy_all(tmp_path):
    """The heavy table is ~0.31 GiB: two sockets of 0.2 GiB hold one interleaved copy, not a copy each."""
    small = f"hardware.profile={_profile_with(tmp_path, 'host', 'dram_gib', 0.2)}"
    node_pass({"gpus": 2, "numa_nodes": 2}, small)
    for node in ({"gpus": 2, "numa_nodes": 2, "table_copies": "per-numa"}, {"gpus": 2}):
        with pytest.raises(InputError) as refused:
            node_pass(node, small)
        assert refused.value.field == ("hardware.node.table_copies" if "table_copies" in node else "strategies.placement")


def test_another_pass_of_the_node_lines_up_gpu_by_gpu_and_step_by_step():
    """Timed arrivals give each GPU's passes different step counts; GPU g's step i is i x gpus + g in both."""
    timed = ["workload.arrival={kind: poisson, rate_per_s: 400}"]
    prepared, node = node_pass({"gpus": 3, "numa_nodes": 1}, *timed)
    baseline = simulate_run(prepared, ALL_HBM)
    for outcome in (node, baseline):
        index = outcome.steps.step_column("index")
        assert np.all(np.diff(index) > 0)
        for g, gpu in enumerate(outcome.gpus):
            mine = index[index % 3 == g] // 3
            assert mine.tolist() == gpu.steps.step_column("index").tolist()
            assert outcome.steps.step_column("tokens")[index % 3 == g].tolist() == gpu.steps.step_column("tokens").tolist()


def test_a_node_run_is_deterministic_and_reports_each_gpu(tmp_path, capsys):
    args = ["run", str(tmp_path / "s.yaml"), "--quiet", "--set", "hardware.node={gpus: 4, gpus_per_switch: 2, numa_nodes: 2}"]
    (tmp_path / "s.yaml").write_text(json.dumps(HEAVY))
    assert main(["check", *args[1:2], *args[3:]]) == 0
    assert "a node of 4 GPUs on 2 socket(s), 2 per switch, tables per-node" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = (tmp_path / "a" / "results.json").read_bytes()
    assert first == (tmp_path / "b" / "results.json").read_bytes()
    node = json.loads(first)["node"]
    assert [(g["gpu"], g["socket"], g["switch"]) for g in node["per_gpu"]] == [(0, 0, 0), (1, 0, 0), (2, 1, 1), (3, 1, 1)]
    assert all(g["overhead_pct"] > 0 for g in node["per_gpu"])

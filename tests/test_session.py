"""Honour or refuse: the scenario's hashing plugin is the one that runs, tiers no executor prices are
refused, and HBM is one budget (weights, Engram tables, caches, staging buffers, warm-up activations,
reserved memory, and the KV cache in what they leave)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.hbm import activation_peak_bytes, backbone_params
from engramsim.plugins.placement.single_tier import SingleTier
from engramsim.registry import register
from engramsim.runner import simulate_run
from engramsim.scenario import Backbone
from engramsim.scenario_io import load_scenario
from engramsim.session import ALL_HBM, prepare
from engramsim.strategies import Placement, Tier
from tests.test_run import SMALL

sys.path.insert(0, str(Path(__file__).parent / "plugin_pkg"))
import demo_hashing  # noqa: E402,F401  (registers demo-modulo)
import demo_lru  # noqa: E402,F401  (registers demo-lru)
import demo_next_step  # noqa: E402,F401  (registers demo-next-step)


@register("placement", "test-all-cxl")
class AllCXL(SingleTier):
    """Every row in a CXL memory pool (no executor prices CXL yet)."""

    tier = Tier.CXL


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def refused(capsys, args: list[str], field: str, words: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f": {field}: " in err and words in err, err
    return err


def test_the_scenarios_hashing_plugin_is_the_one_that_runs(scenario, vocab):
    prepared = prepare(load_scenario(scenario, ["strategies.hashing={name: demo-modulo, params: {rows_per_head: 101}}"]), "s")
    w = prepared.workload
    heads = prepared.scenario.model.engram.heads_per_layer
    positions = np.arange(w.num_tokens)
    ids = vocab.compress(w.tokens(positions))
    for layer, rows in w.token_rows(positions).items():
        expected = (ids[:, None] + np.arange(heads)) % 101 + np.arange(heads) * 101
        np.testing.assert_array_equal(rows, expected)
        assert prepared.tables[layer].rows == heads * 101
    outcome = simulate_run(prepared)
    assert max(r.rows_unique for s in outcome.steps for r in s.layers) <= heads * 101


def test_hashing_params_are_validated_by_the_plugin(scenario, capsys):
    refused(capsys, ["check", str(scenario), "--set", "strategies.hashing={name: demo-modulo, params: {rows_per_head: 0}}"],
            "strategies.hashing.params.rows_per_head", "greater than 0")


def test_a_tier_no_executor_prices_is_refused(scenario, tmp_path, capsys):
    refused(capsys, ["run", str(scenario), "--out", str(tmp_path / "o"), "--set", "strategies.placement=test-all-cxl"],
            "strategies.placement", "CXL")
    assert not (tmp_path / "o").exists()


def test_a_cache_that_does_not_fit_in_hbm_is_refused(scenario, tmp_path, capsys):
    err = refused(capsys, ["run", str(scenario), "--out", str(tmp_path / "o"), "--set",
                           "strategies.cache={name: demo-lru, params: {rows: 1000000000}}"], "strategies.cache", "Engram caches")
    assert "GiB of HBM" in err
    assert not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_are_refused(scenario, tmp_path, capsys):
    refused(capsys, ["run", str(scenario), "--out", str(tmp_path / "o"), "--set", "model.backbone.layers=400", "--set", "model.backbone.hidden=16384",
                     "--set", "model.backbone.intermediate=65536"], "model.backbone", "backbone weights")


def test_hbm_is_one_budget(scenario, tmp_path):
    """The KV cache gets the whole blocks left of gpu_memory_utilization x HBM once everything else is
    placed: a bigger cache, or a prefetch that leads by a step (a second staging slot), leaves fewer."""
    def hbm(*sets: str) -> dict:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert main(["run", str(scenario), "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
        return json.loads((out / "results.json").read_text())["hbm"]

    plain = hbm()
    cached = hbm("strategies.cache={name: demo-lru, params: {rows: 100000}}")
    ahead = hbm("strategies.prefetch=demo-next-step")
    row = 64 * 2
    assert cached["items_bytes"]["Engram caches"] == 2 * 100_000 * row
    assert ahead["items_bytes"]["Engram staging buffers"] == 2 * plain["items_bytes"]["Engram staging buffers"]
    block = 8 * 2 * 2 * 128 * 2 * 256  # layers x (K, V) x kv_heads x head_dim x bf16 bytes x 256 tokens
    for report in (plain, cached, ahead):
        assert report["kv_block_size"] == 256 and report["kv_block_bytes"] == block
        assert report["usable_bytes"] == int(0.9 * report["capacity_bytes"])
        assert report["kv_blocks"] == (report["usable_bytes"] - sum(report["items_bytes"].values())) // block
        assert report["kv_bytes"] == report["kv_blocks"] * block
    assert plain["kv_blocks"] - cached["kv_blocks"] in (2 * 100_000 * row // block, 2 * 100_000 * row // block + 1)
    assert ahead["kv_blocks"] < plain["kv_blocks"] < plain["kv_blocks_without_engram"]
    assert plain["items_bytes"]["reserved (CUDA context, workspaces)"] == 1 << 29


def test_warm_up_activations_by_hand(scenario):
    """nano-vLLM's warm-up runs max_num_batched_tokens (512) as sequences of the longest prompt + output
    (96 + 24): 4 of 120 tokens. The widest block keeps the residual, the MLP's input and output and
    its 3 x 2816 intermediates live per token (the MLP is wider than attention and the Engram layer);
    each sequence's last token has logits in bf16 and fp32."""
    s = load_scenario(scenario)
    mlp_block = 3 * 1024 + 3 * 2816
    assert activation_peak_bytes(s, engram=True) == 4 * 120 * mlp_block * 2 + 4 * 32000 * (2 + 4)
    wide_engram = s.model_copy(update={"model": s.model.model_copy(update={"engram": s.model.engram.model_copy(update={"hc_mult": 4})})})
    engram_block = 3 * 1024 + 2 * 8 * 64 + 5 * 1024 + 3 * 4 * 1024  # memory vector, value and 4 keys, 3 per branch
    assert activation_peak_bytes(wide_engram, engram=True) == 4 * 120 * engram_block * 2 + 4 * 32000 * 6
    assert activation_peak_bytes(wide_engram, engram=False) == 4 * 120 * mlp_block * 2 + 4 * 32000 * 6


def test_each_pass_gets_its_kv_cache(scenario):
    """The offloaded and all-HBM passes share the configured pass's blocks (so they run the same
    steps); the no-Engram pass gets a model without Engram's. `kv_blocks` gives every pass that many."""
    prepared = prepare(load_scenario(scenario), "s")
    assert prepared.scheduler().blocks.total == prepared.kv.blocks < prepared.kv.blocks_without_engram
    assert prepared.scheduler(engram=False).blocks.total == prepared.kv.blocks_without_engram
    tight = prepare(load_scenario(scenario, ["strategies.scheduler.params={kv_blocks: 10, block_size: 16}"]), "s")
    assert tight.kv.blocks == tight.kv.blocks_without_engram == 10
    offloaded, baseline, no_engram = simulate_run(tight), simulate_run(tight, ALL_HBM), simulate_run(tight, engram=False)
    assert offloaded.serving is not None and offloaded.serving.preemptions > 0 and offloaded.serving.kv_used_peak == 1.0
    assert offloaded.serving == baseline.serving == no_engram.serving
    assert [(s.kind, s.seqs, s.tokens) for s in offloaded.steps] == [(s.kind, s.seqs, s.tokens) for s in baseline.steps]


def test_the_vllm_scheduler_runs_mixed_steps(scenario, tmp_path):
    out = tmp_path / "vllm"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--set", "strategies.scheduler=vllm",
                 "--set", "workload.batching.max_num_batched_tokens=100"]) == 0
    doc = json.loads((out / "results.json").read_text())
    kinds = {line.split(",")[1] for line in (out / "steps.csv").read_text().splitlines()[1:]}
    assert {"prefill", "mixed", "decode"} <= kinds
    assert doc["hbm"]["kv_block_size"] == 16 and doc["summary"]["kv_blocks_total"] == doc["hbm"]["kv_blocks"]


def test_only_a_chunking_scheduler_takes_prompts_longer_than_the_token_budget(scenario, tmp_path):
    sets = ["workload.prompt_len={dist: fixed, value: 150}", "workload.batching.max_num_batched_tokens=100"]
    with pytest.raises(InputError, match="the nano-vllm scheduler prefills whole prompts") as refused:
        prepare(load_scenario(scenario, sets), "s")
    assert refused.value.field == "workload.prompt_len.value"
    out = tmp_path / "long"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--set", "strategies.scheduler=vllm"]
                + [a for item in sets for a in ("--set", item)]) == 0
    rows = (out / "steps.csv").read_text().splitlines()
    tokens = [int(r.split(",")[rows[0].split(",").index("tokens")]) for r in rows[1:]]
    assert max(tokens) <= 100  # every 150-token prompt went in chunks within the budget
    doc = json.loads((out / "results.json").read_text())
    assert doc["summary"]["prompt_tokens"] == 150 * doc["scenario"]["workload"]["requests"]


def test_backbone_params_by_hand():
    bb = Backbone(layers=2, hidden=8, intermediate=16, vocab=10, attention={"heads": 2, "kv_heads": 1, "head_dim": 4})
    attention = 8 * (2 + 2) * 4 + 2 * 4 * 8
    assert backbone_params(bb) == 2 * (attention + 3 * 8 * 16) + 2 * 8 * 10


def test_prepare_refuses_before_building_anything_big(scenario):
    with pytest.raises(InputError, match="HBM"):
        prepare(load_scenario(scenario, ["strategies.placement=all-hbm", "model.engram.rows_per_head=100000000"]), "s")


@register("placement", "test-even-rows-in-hbm")
class EvenRowsInHBM(Placement):
    """Even rows in HBM, odd rows in host DRAM (a table split between tiers)."""

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return np.where(rows % 2 == 0, Tier.HBM, Tier.HOST).astype(np.uint8)

    def bytes_per_tier(self) -> dict[Tier, int]:
        total = sum(t.bytes for t in self.setup.tables.values())
        return {Tier.HBM: total // 2, Tier.HOST: total - total // 2}


def test_the_simulator_runs_a_split_placement_the_real_backend_refuses(scenario, tmp_path, capsys):
    assert main(["run", str(scenario), "--out", str(tmp_path / "sim"), "--quiet", "--set", "strategies.placement=test-even-rows-in-hbm"]) == 0
    summary = json.loads((tmp_path / "sim" / "results.json").read_text())["summary"]
    assert summary["rows_placed_hbm"] > 0 and summary["rows_missed"] > 0
    refused(capsys, ["run", str(scenario), "--backend", "cpu", "--out", str(tmp_path / "cpu"), "--set",
                     "strategies.placement=test-even-rows-in-hbm"], "strategies.placement", "whole-table placements only")
    assert not (tmp_path / "cpu").exists()

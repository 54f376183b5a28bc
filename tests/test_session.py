"""Honour or refuse: the scenario's hashing plugin is the one that runs, tiers no executor prices are
refused, and HBM is one budget (weights, KV cache, Engram tables, caches, staging buffers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.hbm import backbone_params
from engramsim.plugins.placement.single_tier import SingleTier
from engramsim.registry import register
from engramsim.runner import simulate_run
from engramsim.scenario import Backbone
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare
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
    """A bigger cache, or a prefetch that leads by a step (a second staging slot), leaves less for the KV cache."""
    def hbm(*sets: str) -> dict:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert main(["run", str(scenario), "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
        return json.loads((out / "results.json").read_text())["hbm"]

    plain = hbm()
    cached = hbm("strategies.cache={name: demo-lru, params: {rows: 100000}}")
    ahead = hbm("strategies.prefetch=demo-next-step")
    row = 64 * 2
    assert cached["items_bytes"]["Engram caches"] == 2 * 100_000 * row
    assert plain["kv_free_bytes"] - cached["kv_free_bytes"] == 2 * 100_000 * row
    assert ahead["items_bytes"]["Engram staging buffers"] == 2 * plain["items_bytes"]["Engram staging buffers"]
    assert plain["capacity_bytes"] == sum(plain["items_bytes"].values()) + plain["kv_free_bytes"]


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

"""Frequency-profiled policies: the `static-hot` cache and the `hot-rows` placement.

The profile never sees the served tokens (its tokens come only from its range, less the served
windows, or the range is refused), the hot set is exactly the profile's top rows, the cache never
exceeds its capacity and hits only on rows it holds, the placement puts exactly the top rows in
HBM, runs are deterministic and say which tokens built the profile, and bad input is one line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.frequency import segments
from engramsim.plugins.cache.static_hot import StaticHot
from engramsim.plugins.placement.hot_rows import HotRows
from engramsim.registry import build
from engramsim.scenario import StrategyChoice
from engramsim.scenario_io import scenario_from_dict
from engramsim.session import prepare, strategies
from engramsim.splits import range_mask, served_mask
from engramsim.strategies import StepView, Tier
from engramsim.traces.format import load_trace
from engramsim.workload import make_requests

SMALL = {
    "name": "hot",
    "model": {
        "backbone": {"layers": 6, "hidden": 512, "intermediate": 1024, "attention": {"heads": 4, "kv_heads": 2, "head_dim": 64},
                     "vocab": 32000},
        "engram": {"layers": [1, 4], "heads": 2, "rows_per_head": 20011, "head_dim": 32, "hc_mult": 1},
    },
    "hardware": "h100-sxm",
    "workload": {"trace": "cpython-docs", "requests": 10, "prompt_len": {"dist": "uniform", "low": 16, "high": 64},
                 "output_len": {"dist": "uniform", "low": 4, "high": 16}},
    "strategies": {"placement": "all-host", "cache": "none", "prefetch": "layer-ahead", "transport": "staged"},
    "run": {"seed": 1},
}


def scenario(cache: dict | str = "none", placement: dict | str = "all-host", seed: int = 1, requests: int = 10, **run) -> dict:
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["strategies"] |= {"cache": cache, "placement": placement}
    data["workload"]["requests"] = requests
    data["run"] |= {"seed": seed, **run}
    return data


def prepared(data: dict):
    return prepare(scenario_from_dict(data, source="hot.yaml"), "hot.yaml")


def brute_counts(prep, allowed: np.ndarray, trace_name: str = "cpython-docs") -> dict[int, Counter]:
    """Per layer, every row's lookups over the allowed tokens, each run of them hashed on its own."""
    tokens = np.asarray(load_trace(trace_name).tokens)
    vocab = prep.workload.vocab
    out: dict[int, Counter] = {layer: Counter() for layer in prep.tables}
    positions, starts = segments(allowed)
    bounds = list(starts) + [positions.size]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        raw = tokens[positions[a:b]]
        ids = raw.astype(np.int64) if vocab is None else vocab.compress(raw)
        for layer, rows in prep.hashing.hash_sequences(ids, np.array([0]), threads=1).items():
            out[layer].update((rows + prep.hashing.offsets[layer]).reshape(-1).tolist())
    return out


def top(counts: Counter, n: int) -> np.ndarray:
    ranked = sorted(counts.items(), key=lambda rc: (-rc[1], rc[0]))[:n]
    return np.sort(np.array([row for row, _ in ranked], dtype=np.int64))


# ---- the profile never sees the served tokens ---------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), requests=st.integers(1, 30), start=st.floats(0, 0.8), width=st.floats(0.05, 0.2),
       exclude=st.booleans())
def test_the_hot_set_is_built_only_from_its_range_less_the_served_windows(seed, requests, start, width, exclude):
    """Property: the profiled tokens lie in the range and outside every served window (or the
    scenario is refused naming the range), and the hot set is the top rows of exactly those tokens."""
    end = min(1.0, start + width)
    cache = {"name": "static-hot", "params": {"rows": 500, "profile_range": [start, end], "exclude_served": exclude}}
    data = scenario(cache, seed=seed, requests=requests)
    try:
        prep = prepared(data)
    except InputError as exc:
        assert exc.field in ("strategies.cache.params.profile_range",) and (not exclude or "no tokens" in str(exc)), str(exc)
        return
    _, hot, _ = strategies(prep)
    assert isinstance(hot, StaticHot) and hot.split.same_trace
    trace = load_trace("cpython-docs")
    n = int(np.asarray(trace.tokens).size)
    served = make_requests(prep.scenario.workload, trace, seed)
    inside = served_mask(n, served.trace_start, served.window_len)
    assert not (hot.split.allowed & inside).any()
    assert not (hot.split.allowed & ~range_mask(n, (start, end))).any()
    counts = brute_counts(prep, hot.split.allowed)
    for layer in prep.tables:
        assert np.array_equal(hot.contents(layer), top(counts[layer], 500))


def test_a_range_holding_served_tokens_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "hot.yaml"
    for kind, choice in (("cache", {"name": "static-hot", "params": {"rows": 100, "exclude_served": False}}),
                         ("placement", {"name": "hot-rows", "params": {"hbm_rows": 100, "exclude_served": False}})):
        path.write_text(yaml.safe_dump(scenario(**{kind: choice})))
        out = tmp_path / "out"
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"strategies.{kind}.params.profile_range" in err and "served" in err, err
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["hot.yaml"]


def test_another_trace_is_profiled_whole_and_results_say_so(tmp_path):
    cache = {"name": "static-hot", "params": {"rows": 300, "profile_trace": "english-prose", "profile_range": [0.0, 0.5]}}
    prep = prepared(scenario(cache))
    _, hot, _ = strategies(prep)
    assert isinstance(hot, StaticHot) and not hot.split.same_trace
    assert hot.describe() == "trace english-prose [0, 0.5)"
    n = int(np.asarray(load_trace("english-prose").tokens).size)
    assert np.array_equal(hot.split.allowed, range_mask(n, (0.0, 0.5)))
    counts = brute_counts(prep, hot.split.allowed, "english-prose")
    for layer in prep.tables:
        assert np.array_equal(hot.contents(layer), top(counts[layer], 300))


# ---- the cache: capacity, hits only on held rows, nothing admitted or evicted -------------------
@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(0, 2 * 20011 * 2 - 1), max_size=400, unique=True))
def test_hits_are_exactly_the_held_rows_and_the_set_never_changes(rows):
    hot = _hot_cache()
    for layer in hot._held:
        before = hot.contents(layer).copy()
        looked = np.array(sorted(rows), dtype=np.int64)
        found = hot.lookup_changes(layer, looked, StepView(None))  # type: ignore[arg-type]
        assert np.array_equal(found.hit, np.isin(looked, before))
        assert found.admitted.size == 0 and found.evicted.size == 0
        assert np.array_equal(hot.contents(layer), before) and hot.size(layer) == before.size <= hot.capacity_rows(layer)


_CACHE: list[StaticHot] = []


def _hot_cache() -> StaticHot:
    if not _CACHE:
        prep = prepared(scenario({"name": "static-hot", "params": {"rows": 2000}}))
        cache = strategies(prep)[1]
        assert isinstance(cache, StaticHot)
        _CACHE.append(cache)
    return _CACHE[0]


@pytest.mark.parametrize("rows", [50, 10**6])
def test_a_full_run_stays_within_capacity_and_counts_its_hits(rows, tmp_path):
    """The planner checks capacity and the cache's reports every lookup; the hits it counts are the
    held rows among the rows outside HBM; a capacity above the rows profiled holds every one of them."""
    data = scenario({"name": "static-hot", "params": {"rows": rows}})
    prep = prepared(data)
    placement, cache, _ = strategies(prep)
    assert isinstance(cache, StaticHot)
    for layer in prep.tables:
        assert cache.size(layer) <= rows
        if rows > 10**5:
            assert cache.size(layer) == len(brute_counts(prep, cache.split.allowed)[layer])
    assert prep.hbm["Engram caches"] == sum(rows * t.row_bytes for t in prep.tables.values())
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]
    assert summary["cache_hits"] > 0


# ---- the placement: exactly the top rows in HBM --------------------------------------------------
@pytest.mark.parametrize("hbm_rows", [1, 777, 10**5])
def test_hot_rows_places_exactly_the_profiles_top_rows_in_hbm(hbm_rows):
    prep = prepared(scenario(placement={"name": "hot-rows", "params": {"hbm_rows": min(hbm_rows, 40022),
                                                                       "profile_range": [0.5, 1.0]}}))
    placement = strategies(prep)[0]
    assert isinstance(placement, HotRows)
    hbm = 0
    for layer, table in prep.tables.items():
        counts = brute_counts(prep, placement.split.allowed)[layer]
        expected = top(counts, min(hbm_rows, 40022))
        tiers = placement.tier_of(layer, np.arange(table.rows, dtype=np.int64))
        assert np.array_equal(np.flatnonzero(tiers == Tier.HBM), expected)
        assert set(np.unique(tiers).tolist()) <= {Tier.HBM, Tier.HOST}
        hbm += expected.size * table.row_bytes
    assert placement.bytes_per_tier()[Tier.HBM] == hbm
    assert sum(placement.bytes_per_tier().values()) == sum(t.bytes for t in prep.tables.values())


def test_hot_rows_serves_its_hbm_rows_without_fetching_them(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(scenario(placement={"name": "hot-rows", "params": {"hbm_rows": 3000}})))
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    path.write_text(yaml.safe_dump(scenario()))
    assert main(["run", str(path), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    hot, host = (json.loads((tmp_path / d / "results.json").read_text())["summary"] for d in "ab")
    assert hot["pcie_bytes"] < host["pcie_bytes"] and hot["rows_placed_hbm"] > 0 == host["rows_placed_hbm"]


# ---- determinism and what the results say ---------------------------------------------------------
def test_same_scenario_same_bytes_and_the_results_say_which_tokens(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(scenario({"name": "static-hot", "params": {"rows": 800, "profile_range": [0.2, 0.9]}},
                                            {"name": "hot-rows", "params": {"hbm_rows": 500, "profile_trace": "english-prose"}})))
    for out in ("a", "b"):
        assert main(["run", str(path), "--out", str(tmp_path / out), "--quiet"]) == 0
    a, b = ((tmp_path / out / "results.json").read_bytes() for out in "ab")
    assert a == b
    sources = json.loads(a)["sources"]
    assert sources["cache"]["trace"] == "cpython-docs" and sources["cache"]["range"] == [0.2, 0.9] and sources["cache"]["served_trace"]
    assert sources["placement"]["trace"] == "english-prose" and sources["placement"]["range"] == [0.0, 1.0]
    assert not sources["placement"]["served_trace"]


def test_a_run_without_a_learning_policy_writes_no_sources(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(scenario()))
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert "sources" not in json.loads((tmp_path / "a" / "results.json").read_text())


# ---- bad input: one line naming the file and field, exit 2, nothing written -----------------------
BAD = {
    "unknown param": ({"cache": {"name": "static-hot", "params": {"rows": 10, "size": 3}}}, ("hot.yaml", "strategies.cache.params.size")),
    "rows missing": ({"cache": {"name": "static-hot"}}, ("strategies.cache.params.rows",)),
    "rows zero": ({"cache": {"name": "static-hot", "params": {"rows": 0}}}, ("strategies.cache.params.rows",)),
    "range backwards": ({"cache": {"name": "static-hot", "params": {"rows": 10, "profile_range": [0.6, 0.2]}}},
                        ("strategies.cache.params.profile_range", "0 <= start < end <= 1")),
    "range outside": ({"placement": {"name": "hot-rows", "params": {"hbm_rows": 10, "profile_range": [0.0, 1.5]}}},
                      ("strategies.placement.params.profile_range",)),
    "no such profile trace": ({"cache": {"name": "static-hot", "params": {"rows": 10, "profile_trace": "no-such-trace"}}},
                              ("strategies.cache.params.profile_trace",)),
    "profile of served tokens": ({"placement": {"name": "hot-rows", "params": {"hbm_rows": 10, "exclude_served": False}}},
                                 ("strategies.placement.params.profile_range", "served")),
    "more hbm rows than the table": ({"placement": {"name": "hot-rows", "params": {"hbm_rows": 10**6}}},
                                     ("strategies.placement.params.hbm_rows", "table holds")),
    "a cache larger than HBM": ({"cache": {"name": "static-hot", "params": {"rows": 1 << 36}}}, ("strategies.cache", "HBM")),
    "static-hot on a real backend": ({"cache": {"name": "static-hot", "params": {"rows": 10}}, "backend": "cpu"},
                                     ("strategies.cache", "--backend sim")),
    "hot-rows on a real backend": ({"placement": {"name": "hot-rows", "params": {"hbm_rows": 10}}, "backend": "cpu"},
                                   ("strategies.placement", "whole-table")),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    change, expect = BAD[name]
    change = dict(change)
    backend = change.pop("backend", None)
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(scenario(**change)))
    before = set(tmp_path.rglob("*"))
    args = ["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--yes"] + (["--backend", backend] if backend else [])
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("engramsim") and "Traceback" not in err, err
    for part in expect:
        assert part in err, f"{part!r} not in {err!r}"
    assert set(tmp_path.rglob("*")) == before, "output left behind"


def test_built_directly_the_plugins_name_their_own_fields():
    prep = prepared(scenario())
    with pytest.raises(InputError) as exc:
        build("cache", StrategyChoice(name="static-hot", params={"rows": 5, "exclude_served": False}), prep.setup())
    assert exc.value.field == "strategies.cache.params.profile_range"


def test_the_profile_trace_field_is_named_for_a_trace_from_another_tokenizer(tmp_path):
    from engramsim.traces.format import Trace, save_trace

    other = tmp_path / "other.npz"
    save_trace(Trace.from_documents([np.arange(100)], name="other",
                                    tokenizer={"file": "x.json", "sha256": "0" * 64}), other)
    with pytest.raises(InputError) as exc:
        prepared(scenario({"name": "static-hot", "params": {"rows": 5, "profile_trace": str(other)}}))
    assert exc.value.field == "strategies.cache.params.profile_trace"


def test_segments_cut_at_every_gap():
    allowed = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    positions, starts = segments(allowed)
    assert positions.tolist() == [1, 2, 4, 7, 8, 9] and starts.tolist() == [0, 2, 3]
    assert Path(__file__).name == "test_static_hot.py"

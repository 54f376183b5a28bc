"""Uncertainty bands: profiles drawn from a profile's spreads (seeded, within the ranges and the
fields' bounds), p5 / p50 / p95 by hand, `engramsim run --samples` (results.json `bands`, the band
beside each headline number, byte-identical for one seed) and `engramsim sweep --samples` (a point
per sample, a `sample` column, resumable to the same bytes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.cli import main
from engramsim.hardware.presets import load_profile
from engramsim.hardware.profile import Spread
from engramsim.uncertainty import Z95, bands, sample_profile, sample_profiles, sigma_for_p95
from tests.test_sweep import _files, _rows, _sweep, tiny  # noqa: F401  (tiny: the fixture)

H100 = load_profile("h100-sxm")


def _value(profile, key):
    *sections, name = key.split(".")
    node = profile
    for section in sections:
        node = getattr(node, section)
    return getattr(node, name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(1, 10_000))
def test_samples_are_seeded_and_stay_within_their_ranges(seed, index):
    one, drawn = sample_profile(H100, seed, index)
    assert sample_profile(H100, seed, index) == (one, drawn)  # the same seed and index: the same profile
    assert sorted(drawn) == sorted(H100.uncertainty)
    for key, spread in H100.uncertainty.items():
        assert _value(one, key) == drawn[key] and spread.low <= drawn[key] <= spread.high
    untouched = one.model_copy(update={"gpu": H100.gpu, "link": H100.link, "host": H100.host, "socket": H100.socket,
                                       "step_overhead_us": H100.step_overhead_us,
                                       "step_overhead_per_seq_us": H100.step_overhead_per_seq_us})
    assert untouched == H100  # nothing but the spreads' numbers moves


def test_a_spread_added_or_removed_never_moves_anothers_draws():
    fewer = H100.model_copy(update={"uncertainty": {k: v for k, v in H100.uncertainty.items() if not k.startswith("socket.")}})
    assert len(fewer.uncertainty) < len(H100.uncertainty)
    for index in (1, 2, 3):
        all_drawn, some_drawn = sample_profile(H100, 0, index)[1], sample_profile(fewer, 0, index)[1]
        assert some_drawn == {key: all_drawn[key] for key in some_drawn}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sigma=st.floats(0.01, 5))
def test_a_lognormal_draw_is_clipped_to_what_its_field_accepts(seed, sigma):
    profile = H100.model_copy(update={"uncertainty": {"gpu.compute_efficiency": Spread(dist="lognormal", sigma=sigma, source="t")}})
    for one in sample_profiles(profile, 3, seed):
        assert 0 < one.gpu.compute_efficiency <= 1


def test_lognormal_sigma_puts_the_residuals_p95_at_the_95th_percentile():
    assert sigma_for_p95(0.1) == pytest.approx(math.log(1.1) / 1.959964)
    profile = H100.model_copy(update={"uncertainty": {"link.h2d_gbps": Spread(dist="lognormal", sigma=sigma_for_p95(0.1), source="t")}})
    ratios = np.array([one.link.h2d_gbps / H100.link.h2d_gbps for one in sample_profiles(profile, 4000, 7)])
    assert np.percentile(np.abs(np.log(ratios)), 95) == pytest.approx(math.log(1.1), rel=0.05)
    assert Z95 == pytest.approx(1.959964)


def test_a_triangular_spread_has_its_mode_at_the_profiles_value():
    """step_overhead_us 300 over 100..1000: the CDF at the mode is 200/900, so that quantile draws
    300 itself, and the median is 1000 - sqrt(0.5 x 900 x 700); 4,000 draws put the densest bin at
    the mode (the density falls linearly on both sides, slower above it). Guards: a preset's band that leaves out its own headline number."""
    from engramsim.uncertainty import _draw
    spread = Spread(dist="triangular", low=100.0, high=1000.0, source="t")
    z_mode = math.sqrt(2.0) * _erfinv(2 * (200 / 900) - 1)
    assert _draw(300.0, spread, z_mode) == pytest.approx(300.0)
    assert _draw(300.0, spread, 0.0) == pytest.approx(1000.0 - math.sqrt(0.5 * 900 * 700))
    profile = H100.model_copy(update={"step_overhead_us": 300.0, "uncertainty": {"step_overhead_us": spread}})
    drawn = np.array([one.step_overhead_us for one in sample_profiles(profile, 4000, 3)])
    counts, edges = np.histogram(drawn, bins=9, range=(100, 1000))
    densest = int(np.argmax(counts))
    assert 100 <= drawn.min() and drawn.max() <= 1000 and edges[densest] <= 300 <= edges[densest + 1]  # the densest bin touches the mode


def _erfinv(y: float) -> float:
    lo, hi = -6.0, 6.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def test_bands_by_hand():
    assert bands([1.0, 2.0, 3.0, 4.0, 5.0]) == {"p5": 1.2, "p50": 3.0, "p95": 4.8}
    assert bands([2, 2]) == {"p5": 2.0, "p50": 2.0, "p95": 2.0}
    assert bands([1.0, None]) is None and bands([]) is None


def test_presets_carry_the_sourced_ranges_widened_to_their_own_values():
    assert {spread.dist for spread in H100.uncertainty.values()} == {"triangular"}
    assert (H100.uncertainty["gpu.compute_efficiency"].low, H100.uncertainty["gpu.compute_efficiency"].high) == (0.6, 0.8)
    assert (H100.uncertainty["step_overhead_us"].low, H100.uncertainty["step_overhead_us"].high) == (100.0, 1000.0)
    assert load_profile("l4").uncertainty["gpu.compute_efficiency"].low == 0.5  # its own 0.5, below the sourced 0.6
    assert all(spread.source for spread in H100.uncertainty.values())


def test_replacing_the_link_drops_the_old_links_spreads():
    assert "link.dma_latency_us" in H100.uncertainty
    swapped = load_profile("h100-sxm", link="pcie-gen3-x16")
    assert not any(key.startswith("link.") for key in swapped.uncertainty)
    assert sorted(swapped.uncertainty) == sorted(k for k in H100.uncertainty if not k.startswith("link."))


def _run(tiny, out, *extra):  # noqa: F811
    return main(["run", str(tiny), "--out", str(out), "--quiet", *extra])


def test_run_samples_write_bands_and_print_them_beside_each_number(tiny, tmp_path, capsys):  # noqa: F811
    assert _run(tiny, tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert "bands" not in plain and "uncertainty" not in plain["hardware"]  # a preset's run draws nothing by default
    capsys.readouterr()
    assert main(["run", str(tiny), "--out", str(tmp_path / "a"), "--samples", "5"]) == 0
    out = capsys.readouterr().out
    assert _run(tiny, tmp_path / "b", "--samples", "5") == 0
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    document = json.loads((tmp_path / "a" / "results.json").read_text())
    assert document["summary"] == plain["summary"]  # the headline numbers are the profile's own
    band = document["bands"]
    assert (band["samples"], band["seed"], sorted(band["spreads"])) == (5, 0, sorted(H100.uncertainty))
    throughput = band["metrics"]["throughput_tok_s"]
    assert throughput["p5"] < throughput["p50"] < throughput["p95"]
    assert set(band["metrics"]) >= {"tpot_ms_p50", "overhead_vs_no_engram_pct", "makespan_s"}
    assert f"(p5-p95: {throughput['p5']:,.2f} to {throughput['p95']:,.2f})" in out
    assert "p5-p95 over 5 profiles" in out


def test_sweep_samples_are_points_with_a_sample_column_and_resume_to_the_same_bytes(tiny, tmp_path):  # noqa: F811
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _sweep(tiny, whole, "hardware.link=pcie-gen4-x16,pcie-gen5-x16", extra=("--samples", "3", "--workers", "2")) == 0
    rows = _rows(whole)
    assert [(r["hardware.link"], r["sample"], r["status"]) for r in rows] == [
        (link, str(i), "ok") for link in ("pcie-gen4-x16", "pcie-gen5-x16") for i in (1, 2, 3)]
    assert len({r["id"] for r in rows}) == 6
    point = json.loads((whole / "points" / f"{rows[1]['id']}.json").read_text())
    assert point["sample"]["index"] == 2 and sorted(point["sample"]["values"]) == sorted(
        k for k in H100.uncertainty if not k.startswith("link."))  # the swept link drops the preset link's spreads
    assert len({r["throughput_tok_s"] for r in rows[:3]}) == 3  # every sample is a profile of its own
    assert json.loads((whole / "sweep.json").read_text())["samples"] == 3
    assert _sweep(tiny, cut, "hardware.link=pcie-gen4-x16,pcie-gen5-x16", extra=("--samples", "3", "--workers", "1")) == 0
    for name in sorted((cut / "points").iterdir())[:2]:
        name.unlink()
    assert _sweep(tiny, cut, "hardware.link=pcie-gen4-x16,pcie-gen5-x16", extra=("--samples", "3", "--workers", "1")) == 0
    assert _files(cut) == _files(whole)
    assert _sweep(tiny, cut, "hardware.link=pcie-gen4-x16,pcie-gen5-x16", extra=("--samples", "4")) == 2  # another sweep


def test_a_run_on_a_calibrated_profile_with_spreads_draws_its_band_by_default(tiny, tmp_path):  # noqa: F811
    import yaml

    from engramsim.commands.run import CALIBRATED_SAMPLES

    data = H100.model_dump(mode="json")
    data["provenance"]["kind"] = "calibrated"
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump(data))
    assert _run(tiny, tmp_path / "out", "--set", f"hardware.profile={tmp_path / 'cal.yaml'}") == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["bands"]["samples"] == CALIBRATED_SAMPLES == 8
    assert _run(tiny, tmp_path / "none", "--set", f"hardware.profile={tmp_path / 'cal.yaml'}", "--samples", "0") == 0
    assert "bands" not in json.loads((tmp_path / "none" / "results.json").read_text())

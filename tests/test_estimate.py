"""The estimate a real run prints before it allocates: memory equal to what the session allocates,
one-line refusals (memory, or wall time without --yes), the profile that prices it, and the setup
progress a bar follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from engramsim import estimate
from engramsim.backends import memory
from engramsim.backends.calibration.machine import machine_host
from engramsim.backends.calibration.profile import profile_yaml
from engramsim.errors import InputError
from engramsim.estimate import estimate_real_run, preflight_real, pricing_profile
from engramsim.scenario_io import load_scenario
from engramsim.session import ALL_HBM, prepare
from tests.test_backends import TINY

TWO_LAYERS = ["model.engram.layers=[1, 2]", "model.engram.rows_per_head=100000"]  # test_backends' TINY with two layers


@pytest.fixture(autouse=True)
def no_machine_profiles(tmp_path, monkeypatch):
    """Price with the default CPU profile unless a test puts a calibrated one in place."""
    monkeypatch.setattr(estimate, "PROFILES", tmp_path / "profiles")


def _prepared(tmp_path: Path, overrides: list[str] = ()):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return prepare(load_scenario(path, [*TWO_LAYERS, *overrides, "run.backend=cpu"]), str(path))


def held(session) -> dict[str, list]:
    """Every tensor a CPU session holds, by the footprint item that counts it."""
    layers, standin = session.layers.values(), session.standin
    return {
        "Engram tables": [m.table for m in layers],
        "staging buffers": [t for m in layers for t in m.staging or []],
        "landing buffers": [t for m in layers for t in m.landing],
        "Engram modules": [t for m in layers for t in (*m.module.parameters(), *m.module.buffers())],
        "stand-in weights": [w for block in standin.blocks for w in block.values()] + [standin.lm_head],
        "KV buffer": [standin.kv],
        "activations": [standin.hidden_in],
    }


def test_the_memory_estimate_is_what_the_session_allocates(tmp_path):
    """Guards: the estimate and the allocation drifting apart (one function sizes both)."""
    import torch

    from engramsim.backends.executor import RealSession

    prepared = _prepared(tmp_path)
    predicted = estimate_real_run(prepared, "cpu").memory
    with RealSession(prepared, "cpu", [None, ALL_HBM]) as session:
        tensors = held(session)
        listed = {id(t) for ts in tensors.values() for t in ts}
        for mem in session.layers.values():  # nothing else is held; on the CPU the zero-copy and resident views are the table
            for value in vars(mem).values():
                for t in value if isinstance(value, list) else [value]:
                    assert not isinstance(t, torch.Tensor) or id(t) in listed or t is mem.table
        for name, value in vars(session.standin).items():
            assert not isinstance(value, torch.Tensor) or id(value) in listed, name
        allocated = {item: sum(t.nbytes for t in ts) for item, ts in tensors.items()}
    bounds = {"activations", "Engram activations", "Engram caches", "weight packing", "workload arrays"}
    assert {item: predicted[item] for item in allocated if item not in bounds} == {
        item: size for item, size in allocated.items() if item not in bounds}
    assert allocated["activations"] <= predicted["activations"]
    assert predicted["Engram caches"] == 0 and set(predicted) - set(allocated) <= bounds


def test_a_run_above_available_memory_is_refused_in_one_line(tmp_path, monkeypatch):
    """A table of 10 GB against 8 GiB available: refused naming the table's field, nothing allocated."""
    monkeypatch.setattr(memory, "host_memory", lambda: (16 * memory.GIB, 8 * memory.GIB))
    prepared = _prepared(tmp_path, ["model.engram.rows_per_head=5000000", "model.engram.layers=[1]"])
    with pytest.raises(InputError) as err:
        preflight_real(prepared, "cpu", yes=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith(prepared.source)
    assert err.value.field == "model.engram.rows_per_head" and "8.00 GiB available" in message


def test_a_long_run_needs_yes(tmp_path, monkeypatch):
    prepared = _prepared(tmp_path)
    monkeypatch.setattr(estimate, "MAX_WALL_S", 1e-6)
    with pytest.raises(InputError) as err:
        preflight_real(prepared, "cpu", yes=False)
    message = str(err.value)
    assert "\n" not in message and "pass --yes to run it anyway" in message and "cpu run of 'tiny'" in message
    assert err.value.field  # what to change
    text = preflight_real(prepared, "cpu", yes=True)
    assert text.startswith("cpu run of 'tiny': ~") and "GiB memory" in text and "default-cpu (uncalibrated" in text
    asked: list[str] = []
    with pytest.raises(InputError):
        preflight_real(prepared, "cpu", yes=False, ask=lambda line: asked.append(line) is not None)  # answered no
    assert preflight_real(prepared, "cpu", yes=False, ask=lambda line: True) == text, "a terminal's yes runs it"
    assert asked == [text], "the prompt shows the estimate"


def test_a_short_run_needs_no_yes(tmp_path):
    estimate_ = estimate_real_run(_prepared(tmp_path), "cpu")
    assert 0 < estimate_.wall_s < estimate.MAX_WALL_S
    assert list(estimate_.passes) == ["offloaded", "all-HBM baseline", "no-Engram reference"]
    assert preflight_real(_prepared(tmp_path), "cpu", yes=False) == estimate_.text()


def test_a_profile_calibrated_here_prices_the_run(tmp_path):
    prepared = _prepared(tmp_path)
    assert pricing_profile(prepared, "cpu")[0].name == "default-cpu"
    default = estimate.default_cpu_profile()
    here = default.model_copy(update={"name": "mine", "provenance": default.provenance.model_copy(
        update={"kind": "calibrated", "host": machine_host(), "date": "2026-11-30T00:00:00+00:00"})})
    estimate.PROFILES.mkdir()
    (estimate.PROFILES / "mine.yaml").write_text(profile_yaml(here))
    (estimate.PROFILES / "elsewhere.yaml").write_text(profile_yaml(here.model_copy(update={
        "name": "elsewhere", "provenance": here.provenance.model_copy(update={"host": "another CPU x64 @ far"})})))
    profile, label = pricing_profile(prepared, "cpu")
    assert profile.name == "mine" and "calibrated on this machine, 2026-11-30" in label


def test_a_long_pass_is_extrapolated_and_says_so(tmp_path, monkeypatch):
    whole = estimate_real_run(_prepared(tmp_path), "cpu")
    monkeypatch.setattr(estimate, "SIM_MAX_STEPS", 4)
    cut = estimate_real_run(_prepared(tmp_path), "cpu")
    assert "extrapolated from their first 4 simulated steps" in cut.text()
    for label, seconds in whole.passes.items():
        assert 0.3 * seconds < cut.passes[label] < 3 * seconds


def test_setup_progress_sees_every_table_byte(tmp_path):
    from contextlib import contextmanager

    from engramsim.backends.executor import RealSession

    prepared = _prepared(tmp_path)
    bars: dict[str, list[int]] = {}

    @contextmanager
    def setup_progress(label, total):
        bars[label] = [total, 0]
        yield lambda n: bars[label].__setitem__(1, bars[label][1] + n)

    with RealSession(prepared, "cpu", setup_progress=setup_progress) as session:
        weights = sum(w.nbytes for block in session.standin.blocks for w in block.values()) + session.standin.lm_head.nbytes
    tables = sum(t.bytes for t in prepared.tables.values())
    assert bars == {"Engram tables": [tables, tables], "stand-in weights": [weights, weights]}

"""Golden results: four small scenarios (two Engram layers, a fetch issued `lead_blocks` early, one
issued a step early, the zero-copy transport) give byte-identical results.json files. A change here is a change of
results: regenerate with `python scripts/regen_golden.py` and explain it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "tests" / "golden").glob("*.yaml"))


def regen_module():
    spec = importlib.util.spec_from_file_location("regen_golden", ROOT / "scripts" / "regen_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_goldens_are_there():
    assert [p.stem for p in SCENARIOS] == ["lead-blocks", "lead-steps", "two-layers", "zero-copy"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_results_are_byte_identical_to_the_golden_file(scenario, tmp_path):
    produced = regen_module().produce(scenario, tmp_path / "run").read_bytes()
    golden = scenario.with_suffix(".results.json").read_bytes()
    assert produced == golden, f"{scenario.name}: results changed; if intended, run python scripts/regen_golden.py"

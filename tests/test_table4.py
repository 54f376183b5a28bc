"""scripts/table4.py, the README's Table 4 reconciliation: it runs, and its tables say what the
passes measured (the overhead column is the two throughputs' ratio, the breakdown sums to the
makespan difference)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "table4.py"


@pytest.fixture(scope="module")
def table4():
    spec = importlib.util.spec_from_file_location("table4", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["table4"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_side_by_side_and_breakdown_tables_agree_with_the_passes(table4, capsys):
    assert table4.main(["--no-sensitivity"]) == 0
    out = capsys.readouterr().out
    side = [line for line in out.splitlines() if line.startswith("| ") and "tok/s" in line and "paper" not in line.split("|")[1]]
    assert [line.split("|")[1].strip() for line in side] == [label for label, _, _ in table4.SCENARIOS]
    for line in side:
        ref, off, pct = re.search(r"\| ([\d,.]+) -> ([\d,.]+) tok/s \((-?[\d.]+)%\) \| [+-]", line).groups()
        ref, off = float(ref.replace(",", "")), float(off.replace(",", ""))
        assert float(pct) == pytest.approx(-100 * (1 - off / ref), abs=0.006)
    breakdown = [line for line in out.splitlines() if line.startswith("| ") and " s -> " in line]
    for line in breakdown:
        ref_s, off_s = map(float, re.search(r"([\d.]+) s -> ([\d.]+) s", line).groups())
        kinds = [float(ms) for ms in re.findall(r"([+-][\d,]+) ms", line)]
        assert sum(kinds) / 1e3 == pytest.approx(off_s - ref_s, abs=0.02)  # offline arrivals: no idle time

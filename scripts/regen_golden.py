"""Regenerate the golden results files (tests/golden/*.results.json) from their scenarios.

Run only when a change of results is intended, and say in the commit which numbers moved and
why: `python scripts/regen_golden.py`. tests/test_golden.py compares byte for byte.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"
OVERRIDES = ["run.outputs.plot=false", "run.outputs.timeline=false", "run.outputs.steps_csv=false"]


def produce(scenario: Path, out: Path) -> Path:
    """Run `scenario` on the simulator into `out`; the results.json written."""
    from engramsim.cli import main

    args = ["run", str(scenario), "--out", str(out), "--quiet"] + [a for o in OVERRIDES for a in ("--set", o)]
    if main(args) != 0:
        raise SystemExit(f"{scenario}: the run failed")
    return out / "results.json"


def main() -> int:
    for scenario in sorted(GOLDEN.glob("*.yaml")):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(produce(scenario, Path(tmp) / "run"), scenario.with_suffix(".results.json"))
        print(f"wrote {scenario.with_suffix('.results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The device check's plumbing, checked where no GPU is: the script parses, and every package
engramsim and its CUDA tests import is either in the device image or in the wheels it carries."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "scripts" / "device_wheels.txt"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _listed() -> tuple[set[str], set[str]]:
    """(packages the image holds, packages carried as wheels) as device_wheels.txt says."""
    lines = WHEELS.read_text().splitlines()
    image = next(line for line in lines if line.startswith("# image:")).split(":", 1)[1].split()
    carried = [_name(line) for line in lines if line.strip() and not line.startswith("#")]
    return {n.lower() for n in image}, set(carried)


def _not_carried() -> set[str]:
    """Packages device_wheels.txt says the device check never imports (each with its reason there)."""
    line = next((line for line in WHEELS.read_text().splitlines() if line.startswith("# not carried:")), "# not carried:")
    return {_name(part.split("(")[0]) for part in line.split(":", 1)[1].split(";") if part.strip()}


def test_packages_not_carried_are_never_imported_by_what_the_device_runs():
    """The device check imports the CUDA backend, calibration and validation: none of them may pull a package not carried."""
    code = ("import sys; import engramsim.backends.cuda, engramsim.backends.calibration.profile, engramsim.validate, engramsim.cli; "
            f"sys.exit(bool({sorted(_not_carried())!r} and any(m.split('.')[0] in sys.modules for m in {sorted(_not_carried())!r})))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_device_check_script_parses():
    for script in ("device_check.sh", "fetch_device_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)


def test_every_runtime_and_test_dependency_reaches_the_device():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]} | {"pytest", "pytest-benchmark", "hypothesis"}
    image, carried = _listed()
    assert not image & carried, "one version of each: a package both in the image and carried"
    assert needed <= image | carried | _not_carried(), f"missing on the device: {sorted(needed - image - carried - _not_carried())}"


def test_carried_wheels_bring_what_they_require():
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        pytest.skip("no .whl/ here (scripts/fetch_device_wheels.sh makes it)")
    image, carried = _listed()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        requires = {_name(line.split(":", 1)[1]) for line in meta.splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line}
        assert requires <= image | carried, f"{wheel.name} needs {sorted(requires - image - carried)}"

"""The device check's plumbing, checked where no GPU is: the script parses, and every package
engramsim and its CUDA tests import is either in the device image or in the wheels it carries."""

from __future__ import annotations

import re
import subprocess
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


def test_device_check_script_parses():
    for script in ("device_check.sh", "fetch_device_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)


def test_every_runtime_and_test_dependency_reaches_the_device():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]} | {"pytest", "pytest-benchmark", "hypothesis"}
    image, carried = _listed()
    assert not image & carried, "one version of each: a package both in the image and carried"
    assert needed <= image | carried, f"missing on the device: {sorted(needed - image - carried)}"


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

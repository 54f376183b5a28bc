"""The `compare` fixture: a benchmark records both sides of its comparison, and the run ends with a
"benchmark comparisons" section listing them, printed even under `pytest -q`, where the tests'
own output is captured. Record before asserting, so a failing benchmark still shows its numbers:

    def test_x(benchmark, compare):
        ...
        compare("gather 16k rows", ours="CpuDevice.gather 0.8 ms", baseline="index_select 0.8 ms", ratio=1.02)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

COMPARISONS = pytest.StashKey[list[str]]()


@pytest.fixture
def compare(request: pytest.FixtureRequest) -> Callable[..., None]:
    """compare(label, ours, baseline, ratio=None): `ours` and `baseline` say what ran and how fast;
    `ratio` is the baseline's time over ours (above 1: ours is faster), printed as "N.NNx"."""
    lines = request.config.stash.setdefault(COMPARISONS, [])

    def record(label: str, ours: str, baseline: str, ratio: float | None = None) -> None:
        lines.append(f"{label}{'' if ratio is None else f': {ratio:.2f}x'}\n    ours:     {ours}\n    baseline: {baseline}")

    return record


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables, at the end of the run
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(COMPARISONS, [])
    if lines:
        terminalreporter.write_sep("=", "benchmark comparisons")
        for line in lines:
            terminalreporter.write_line(line)

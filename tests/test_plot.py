"""plot.png: the step series with gaps where nothing runs, the difference to the reference passes,
and the title and time axis read from the results document."""

from __future__ import annotations

import numpy as np
import pytest

from engramsim.plot import Series, latency_minus_ms, plot_labels, step_series, write_plot
from engramsim.records import RunOutcome, StepRecord

PNG = b"\x89PNG\r\n\x1a\n"


def document(backend: str) -> dict:
    strategies = {"placement": {"name": "all-host", "params": {}}, "prefetch": {"name": "layer-ahead", "params": {"lead_blocks": 2}}}
    return {"backend": backend, "scenario": {"name": "small", "strategies": strategies},
            "hardware": {"name": "h100-sxm", "gpu": {"name": "H100 SXM5 80GB"}, "link": {"name": "PCIe Gen5 x16"}}}


def outcome(steps: list[tuple[float, float]], kinds: tuple[str, ...] = ()) -> RunOutcome:
    """A pass of steps (start, end) in seconds; step i is `kinds[i]` (default decode) of one token."""
    records = [StepRecord(index=i, kind=kinds[i] if i < len(kinds) else "decode", start_s=start, end_s=end, tokens=1, seqs=1)
               for i, (start, end) in enumerate(steps)]
    return RunOutcome(steps=records, spans=[], events=0, link_busy_s=0.0, makespan_s=steps[-1][1] if steps else 0.0,
                      output_tokens=len(steps), prompt_tokens=0, ttft_s=np.zeros(0), tpot_s=np.zeros(0))


def test_steps_are_segments_and_idle_time_is_a_gap():
    x, y = step_series(np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 4.0]), np.array([5.0, 6.0, 7.0]))
    np.testing.assert_array_equal(x, [0.0, 1.0, 1.0, 2.0, np.nan, 3.0, 4.0])
    np.testing.assert_array_equal(y, [5.0, 5.0, 6.0, 6.0, np.nan, 7.0, 7.0])
    x, y = step_series(np.zeros(0), np.zeros(0), np.zeros(0))
    assert x.size == y.size == 0


def test_a_long_run_is_drawn_as_means_of_groups_with_its_gaps():
    x, y = step_series(np.array([0.0, 1.0, 2.0, 3.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0, 7.0]),
                       np.array([1.0, 3.0, np.nan, 4.0, 8.0]), max_segments=3)
    np.testing.assert_array_equal(x, [0.0, 2.0, 2.0, 4.0, np.nan, 6.0, 7.0])
    np.testing.assert_array_equal(y, [2.0, 2.0, 4.0, 4.0, np.nan, 8.0, 8.0])


def test_the_difference_pairs_steps_that_did_the_same_work():
    offloaded = outcome([(0.0, 0.003), (0.003, 0.005), (0.005, 0.006)])
    reference = outcome([(0.0, 0.002), (0.002, 0.003), (0.003, 0.004)], kinds=("decode", "prefill"))
    np.testing.assert_allclose(latency_minus_ms(Series.of(offloaded), Series.of(reference)), [1.0, np.nan, 0.0], atol=1e-9)
    shorter = Series.of(outcome([(0.0, 0.002)]))
    assert np.isnan(latency_minus_ms(Series.of(offloaded), shorter)[1:]).all(), "a step the reference never ran has no difference"


@pytest.mark.parametrize("backend, axis", [("sim", "simulated time (s)"), ("cpu", "measured time (s)"), ("cuda", "measured time (s)")])
def test_the_time_axis_says_whose_clock_it_is(backend, axis):
    labels = plot_labels(document(backend))
    assert labels.time_axis == axis
    if backend == "cpu":
        assert "small (cpu): measured on this machine's CPU" in labels.title and "PCIe" not in labels.title
    else:
        assert f"small ({backend}) on h100-sxm: H100 SXM5 80GB, PCIe Gen5 x16" in labels.title
    assert "placement all-host, prefetch layer-ahead (lead_blocks=2)" in labels.title


@pytest.mark.parametrize("references", [True, False])
def test_a_plot_is_written_with_and_without_the_reference_passes(tmp_path, references):
    run = outcome([(0.0, 0.004), (0.004, 0.008), (0.5, 0.504)])
    baseline = outcome([(0.0, 0.003), (0.003, 0.006), (0.5, 0.503)]) if references else None
    no_engram = outcome([(0.0, 0.002), (0.002, 0.004), (0.5, 0.502)]) if references else None
    path = tmp_path / "plot.png"
    write_plot(path, document("sim"), run, baseline, no_engram)
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"], "written atomically: no temporary file left behind"


def test_an_empty_run_still_plots(tmp_path):
    write_plot(tmp_path / "plot.png", document("cpu"), outcome([]), outcome([]), None)
    assert (tmp_path / "plot.png").read_bytes()[:8] == PNG

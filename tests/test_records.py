"""Records stored compactly read back as they were built: step and layer records through their
columns, the timeline's spans up to its bound and its busy time beyond."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim import records
from engramsim.records import LayerRecord, RunOutcome, Span, SpanKind, StepLog, StepRecord, Timeline
from engramsim.results import timeline_json

counts = st.integers(0, 2**31 - 1)
times = st.floats(0, 1e4, allow_nan=False)
layer_records = st.builds(LayerRecord, layer=st.integers(0, 60), rows_unique=counts, references=counts, rows_placed_hbm=counts,
                          cache_hits=counts, rows_missed=counts, rows_speculative=counts, bytes_fetched=st.integers(0, 2**62),
                          issue_step=counts, issue_s=times, ready_s=times, stall_s=times)
step_records = st.builds(StepRecord, index=counts, kind=st.sampled_from(records.KINDS), start_s=times, end_s=times, tokens=counts,
                         seqs=counts, layers=st.lists(layer_records, max_size=3))


@settings(max_examples=40, deadline=None)
@given(st.lists(step_records, max_size=12))
def test_a_step_log_reads_back_the_records_it_was_given(steps):
    records.CHUNK_ROWS, chunk = 3, records.CHUNK_ROWS  # records across chunk boundaries
    try:
        log = StepLog(steps)
        assert list(log) == steps and len(log) == len(steps)
        if steps:
            assert log[-1] == steps[-1] and log[0] == steps[0]
        np.testing.assert_array_equal(log.step_column("latency_s"), [s.latency_s for s in steps])
        np.testing.assert_array_equal(log.layer_column("rows_fetched"), [r.rows_fetched for s in steps for r in s.layers])
        blocks = list(log.blocks())
        np.testing.assert_array_equal(np.concatenate([b.per_step("stall_s") for b in blocks] or [np.empty(0)]),
                                      [s.stall_s for s in steps])
        assert sum(b.steps.size for b in blocks) == len(steps)
    finally:
        records.CHUNK_ROWS = chunk


def test_a_count_that_does_not_fit_its_column_is_an_error_not_a_wrapped_number():
    step = StepRecord(index=0, kind="decode", start_s=0.0, end_s=1.0, tokens=2**31, seqs=1)
    with pytest.raises(OverflowError):
        StepLog([step])
    with pytest.raises(IndexError):
        StepLog()[0]


def test_an_outcome_takes_lists_and_stores_them_compactly():
    step = StepRecord(index=0, kind="prefill", start_s=0.0, end_s=0.5, tokens=4, seqs=1)
    span = Span(kind=SpanKind.HEAD, start_s=0.4, end_s=0.5, step=0)
    outcome = RunOutcome(steps=[step], spans=[span], events=0, link_busy_s=0.0, makespan_s=0.5, output_tokens=1, prompt_tokens=4,
                         ttft_s=np.empty(0), tpot_s=np.empty(0))
    assert isinstance(outcome.steps, StepLog) and list(outcome.steps) == [step]
    assert isinstance(outcome.spans, Timeline) and list(outcome.spans) == [span]


def test_a_timeline_keeps_its_first_steps_spans_counts_all_and_says_so():
    spans = [Span(kind=kind, start_s=step * 1.0, end_s=step * 1.0 + 0.25, step=step, layer=1, bytes=10)
             for step in range(5) for kind in (SpanKind.BLOCKS, SpanKind.H2D)]
    timeline = Timeline(spans, limit=2)
    assert [s.step for s in timeline] == [0, 0, 1, 1] and timeline.dropped == 6
    assert timeline.busy_s[SpanKind.H2D] == timeline.link_s == pytest.approx(1.25)
    assert timeline.busy_s[SpanKind.BLOCKS] == pytest.approx(1.25) and timeline.busy_s[SpanKind.STALL] == 0.0
    document = json.loads(timeline_json(timeline, "t"))
    assert document["otherData"] == {"spans_of_steps_below": 2, "spans_not_drawn": 6}
    assert "steps 0-1 only" in document["traceEvents"][0]["args"]["name"]
    assert len([e for e in document["traceEvents"] if e["ph"] == "X"]) == 4
    assert "otherData" not in json.loads(timeline_json(spans, "t")), "a timeline that kept everything says nothing"

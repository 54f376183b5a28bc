"""Hashing quality (engramsim/hash_quality.py), the alternative hashing plugins it compares, and
`engramsim collisions`: hand-checked cases, properties, and the command line."""

from __future__ import annotations

import json
from collections import Counter
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim import registry
from engramsim.cli import main
from engramsim.hash_quality import (
    BUILTIN_PLUGINS,
    compare,
    distinct_ngrams,
    ideal_collision_rate,
    layer_quality,
    order_quality,
    shares_row,
)
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec, suffix_windows
from engramsim.plugins.hashing.pow2_mask import pow2_sizes
from engramsim.scenario import Engram, StrategyChoice
from engramsim.strategies import HashingSetup
from engramsim.traces.format import load_trace
from engramsim.traces.stats import compressed_ids
from tests.reference_engram import reference_hash

ALTERNATIVES = ("engram-one-head", "engram-pow2-mask", "engram-shared-prime")
VOCAB = 5000


def build(name: str, rows: int | list[int], heads: int = 8, layers=(1, 15), max_ngram: int = 3, vocab: int = VOCAB, pad: int = 2):
    engram = Engram(layers=list(layers), rows_per_head=rows if isinstance(rows, list) else [rows], heads=heads, max_ngram=max_ngram)
    return registry.build_hashing(StrategyChoice(name=name), HashingSetup(engram, vocab, pad))


@pytest.fixture(scope="module")
def docs():
    """The shipped cpython-docs trace as (compressed ids, document starts, vocabulary size, pad)."""
    trace = load_trace("cpython-docs")
    ids, vocab_size, pad = compressed_ids(trace)
    return ids, trace.doc_offsets, vocab_size, pad


@pytest.fixture(scope="module")
def measured(docs):
    ids, starts, vocab_size, pad = docs
    return compare(ids, starts, vocab_size, pad, Engram(layers=[1, 15], heads=8), BUILTIN_PLUGINS, (10_000, 100_000, 1_000_000))


def result(results, plugin: str, size: int):
    return next(r for r in results if r.plugin == plugin and r.rows_per_head == size)


# ---- hand-checked ---------------------------------------------------------------------------------
def test_shares_row_by_hand():
    rows = np.array([0, 1, 1, 3, 0, 2])
    expected = [True, True, True, False, True, False]
    assert shares_row(rows, 4).tolist() == expected
    assert shares_row(rows + (1 << 40) - 4, 1 << 40).tolist() == expected  # a huge head: np.unique instead of bincount
    assert shares_row(np.array([], dtype=np.int64), 4).tolist() == []
    with pytest.raises(ValueError, match="outside the head's 4 rows"):
        shares_row(np.array([0, 4]), 4)


def test_distinct_ngrams_by_hand():
    """5 6 5 6 5 after two pads (0): 2-grams (0,5) (5,6) (6,5) (5,6) (6,5); 3-grams (0,0,5) (0,5,6)
    (5,6,5) (6,5,6) (5,6,5); a second document, 5 6, starts with the pads again."""
    ids = np.array([5, 6, 5, 6, 5, 5, 6])
    windows = suffix_windows(ids, np.array([0, 5]), 3, 0)
    (first2, count2), (first3, count3) = distinct_ngrams(windows)
    # each distinct n-gram once, at its first occurrence, with its count
    grams2 = {(int(windows[1][i]), int(windows[0][i])): int(c) for i, c in zip(first2, count2)}
    assert grams2 == {(0, 5): 2, (5, 6): 3, (6, 5): 2}
    grams3 = {(int(windows[2][i]), int(windows[1][i]), int(windows[0][i])): int(c) for i, c in zip(first3, count3)}
    assert grams3 == {(0, 0, 5): 2, (0, 5, 6): 2, (5, 6, 5): 2, (6, 5, 6): 1}
    assert sorted(first2.tolist()) == [0, 1, 2] and sorted(first3.tolist()) == [0, 1, 2, 3]


def test_order_quality_by_hand():
    """Four distinct n-grams in two heads (3 and 4 rows): head 0 rows 0 0 1 2, head 1 rows 3 1 3 0."""
    rows = np.array([[0, 3], [0, 1], [1, 3], [2, 0]])
    q = order_quality(2, rows, [3, 4], np.array([5, 1, 1, 3]))
    assert q.head_collision_rate == [0.5, 0.5]  # head 0: n-grams 0 and 1; head 1: n-grams 0 and 2
    assert q.all_heads_collide_distinct == 0.25  # only n-gram 0 collides in both
    assert q.all_heads_collide_occurrences == 0.5  # its 5 of the 10 occurrences
    assert q.retained == 3 and q.distinct == 4 and q.occurrences == 10 and q.rows == 7
    assert q.ideal_head_collision_rate == pytest.approx([1 - (2 / 3) ** 3, 1 - (3 / 4) ** 3])
    assert q.ideal_all_heads_collide_distinct == pytest.approx((1 - (2 / 3) ** 3) * (1 - (3 / 4) ** 3))


def test_ideal_rate():
    assert ideal_collision_rate(10, 1) == 0.0 and ideal_collision_rate(1, 5) == 1.0
    assert ideal_collision_rate(1000, 101) == pytest.approx(1 - 0.999**100)


def test_pow2_mask_collides_ngrams_equal_in_the_low_bits_in_every_head():
    """Odd multipliers and XOR carry upwards only: with 8-row heads, 2-grams (1, 2) and (1, 10) share
    every head's row (2 = 10 mod 8), a collision the prime heads of the reference do not force."""
    hashing = build("engram-pow2-mask", 8, heads=4, layers=(1,))
    assert hashing.head_sizes[1].tolist() == [8] * 8
    ids = np.array([1, 2, 7, 1, 10])
    windows = suffix_windows(ids, np.array([0]), 3, 2)
    q = layer_quality(hashing, ids, np.array([0]), 1, 4, windows)
    rows = hashing.hash_sequences(ids, np.array([0]))[1]
    assert (rows[1, :4] == rows[4, :4]).all()  # (1, 2) and (1, 10): every 2-gram head
    assert q[0].all_heads_collide_distinct >= 2 / 5


def test_layer_quality_matches_a_brute_force_count():
    """Per head and over all heads, against Python sets over n-gram tuples and the reference hash."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40, size=600)  # a small alphabet: n-grams repeat
    starts = np.array([0, 250, 400])
    hashing = build("engram", 97, heads=3, layers=(4,), vocab=40, pad=1)
    windows = suffix_windows(ids, starts, 3, 1)
    got = layer_quality(hashing, ids, starts, 4, 3, windows)
    rows = np.concatenate([reference_hash(ids[a:b], hashing.multipliers[4], hashing.primes[4], 3, 3, 1)[0]
                           for a, b in zip(starts, [250, 400, 600])])
    for k, order in enumerate((2, 3)):
        grams = [tuple(int(w[t]) for w in windows[:order]) for t in range(ids.size)]
        first = {}
        for t, g in enumerate(grams):
            first.setdefault(g, t)
        counts = [Counter(int(rows[t, j]) for t in first.values()) for j in range(3 * k, 3 * k + 3)]
        collided = {g: [c[int(rows[t, 3 * k + j])] > 1 for j, c in enumerate(counts)] for g, t in first.items()}
        q = got[k]
        assert q.distinct == len(first) and q.occurrences == ids.size
        assert q.head_collision_rate == pytest.approx([np.mean([c[j] for c in collided.values()]) for j in range(3)])
        every = {g for g, c in collided.items() if all(c)}
        assert q.all_heads_collide_distinct == pytest.approx(len(every) / len(first))
        assert q.all_heads_collide_occurrences == pytest.approx(sum(g in every for g in grams) / ids.size)
        assert q.retained == len(first) - len(every)


# ---- properties -----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**31))
def test_all_heads_collide_never_exceeds_any_heads_rate(distinct, heads, size, seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, size, size=(distinct, heads))
    q = order_quality(2, rows, [size] * heads, rng.integers(1, 5, size=distinct))
    assert q.all_heads_collide_distinct <= min(q.head_collision_rate)
    assert q.retained == q.distinct - round(q.all_heads_collide_distinct * q.distinct)
    assert 0 <= q.all_heads_collide_occurrences <= 1


def test_every_plugin_and_size_keeps_the_bounds(measured):
    for r, o in ((r, o) for r in measured for o in r.orders):
        assert o.all_heads_collide_distinct <= min(o.head_collision_rate) + 1e-12, (r.plugin, r.rows_per_head, o.order)
        assert o.retained == o.distinct - round(o.all_heads_collide_distinct * o.distinct)
        assert o.occurrences == 299_806


def test_collisions_fall_as_the_table_grows(measured):
    for plugin, order in product(BUILTIN_PLUGINS, (2, 3)):
        rates = [result(measured, plugin, size).order(order).mean_head_collision_rate for size in (10_000, 100_000, 1_000_000)]
        every = [result(measured, plugin, size).order(order).all_heads_collide_distinct for size in (10_000, 100_000, 1_000_000)]
        assert rates[0] > rates[1] > rates[2], (plugin, order, rates)
        assert every[0] >= every[1] >= every[2], (plugin, order, every)


def test_the_reference_behaves_like_independent_uniform_heads(measured):
    for size, order in product((100_000, 1_000_000), (2, 3)):
        o = result(measured, "engram", size).order(order)
        assert o.mean_head_collision_rate == pytest.approx(np.mean(o.ideal_head_collision_rate), rel=0.02)
        assert abs(o.all_heads_collide_distinct - o.ideal_all_heads_collide_distinct) < 0.01


def test_multi_head_beats_one_head_per_order_at_equal_total_rows(measured):
    for size, order in product((100_000, 1_000_000), (2, 3)):
        ref, one = result(measured, "engram", size).order(order), result(measured, "engram-one-head", size).order(order)
        assert abs(ref.rows - one.rows) / ref.rows < 2e-3
        assert ref.all_heads_collide_distinct < one.all_heads_collide_distinct / 4
        assert ref.retained > one.retained
        assert one.all_heads_collide_distinct == pytest.approx(one.head_collision_rate[0])  # its heads are one head


def test_masks_of_one_mix_leave_the_heads_dependent(measured):
    """Power-of-two heads read bits of one mix: all heads collide as often as the largest head does."""
    for size, order in product((100_000, 1_000_000), (2, 3)):
        o = result(measured, "engram-pow2-mask", size).order(order)
        assert o.all_heads_collide_distinct == pytest.approx(min(o.head_collision_rate))
        assert o.all_heads_collide_distinct > 3 * result(measured, "engram", size).order(order).all_heads_collide_distinct + 0.05


# ---- the alternative plugins ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternatives_are_registered_with_a_one_line_doc(name):
    cls = registry.get("hashing", name)
    assert registry.summary(cls) and "\n" not in registry.summary(cls)
    assert registry.params_model(cls).model_fields == {}


@pytest.mark.parametrize("name", ALTERNATIVES)
@pytest.mark.parametrize("rows", [1000, [1000, 3000], 646_400])
def test_alternative_rows_stay_in_their_heads_and_are_deterministic(name, rows):
    ids = np.random.default_rng(0).integers(0, VOCAB, size=70_000)  # more than one chunk: the threaded path runs
    starts = np.array([0, 10, 40_000])
    a, b = build(name, rows), build(name, rows)
    one, other = a.hash_sequences(ids, starts, threads=4), b.hash_sequences(ids, starts, threads=1)
    for layer in (1, 15):
        assert one[layer].shape == (ids.size, 16) and one[layer].dtype == np.int64
        assert (one[layer] >= 0).all() and (one[layer] < a.head_sizes[layer]).all()
        np.testing.assert_array_equal(one[layer], other[layer])
        # a sequence's rows do not depend on what is hashed with it
        np.testing.assert_array_equal(one[layer][10:40_000], a.hash_sequences(ids[10:40_000], np.array([0]))[layer])


@pytest.mark.parametrize("name", ALTERNATIVES)
@pytest.mark.parametrize("rows", [1000, 100_000, 646_400])
def test_alternatives_have_the_references_total_rows_within_rounding(name, rows):
    """An order's heads hold 8 x rows_per_head, give or take no more than the reference's own primes
    above it (plus half a power of two, for power-of-two heads)."""
    ref, alt = build("engram", rows), build(name, rows)
    low = 1 << (rows.bit_length() - 1)
    for layer in (1, 15):
        for k in range(2):
            heads = slice(8 * k, 8 * k + 8)
            total, reference = int(alt.head_sizes[layer][heads].sum()), int(ref.head_sizes[layer][heads].sum())
            slack = reference - 8 * rows + (low / 2 if name == "engram-pow2-mask" else 0)
            assert abs(total - 8 * rows) <= slack, (layer, k, total, reference)


def test_pow2_sizes_bring_the_total_nearest_to_heads_times_rows():
    assert pow2_sizes(646_400, 8).tolist() == [1 << 20] * 2 + [1 << 19] * 6  # 5,242,880 for 5,171,200
    assert pow2_sizes(1 << 16, 8).tolist() == [1 << 16] * 8
    assert pow2_sizes(100_000, 8).tolist() == [1 << 17] * 4 + [1 << 16] * 4
    for rows, heads in product((1, 3, 1000, 99_999, 1 << 30), (1, 2, 8)):
        sizes = pow2_sizes(rows, heads)
        low = 1 << (rows.bit_length() - 1)
        assert sizes.size == heads and set(sizes.tolist()) <= {low, 2 * low}
        assert abs(int(sizes.sum()) - heads * rows) <= low / 2


def test_one_head_per_order_is_the_reference_with_one_head_read_by_every_head():
    ids = np.random.default_rng(1).integers(0, VOCAB, size=5000)
    one = build("engram-one-head", 1000).hash_sequences(ids, np.array([0]))
    single = EngramHashing(EngramHashSpec((1, 15), (1000, 1000), 3, 1, 0), VOCAB, 2).hash_sequences(ids, np.array([0]))
    for layer in (1, 15):
        np.testing.assert_array_equal(one[layer], np.repeat(single[layer], 8, axis=1))


def test_shared_prime_heads_share_a_size_and_differ_by_their_multipliers():
    ids = np.random.default_rng(2).integers(0, VOCAB, size=5000)
    shared, ref = build("engram-shared-prime", 1000), build("engram", 1000)
    for layer in (1, 15):
        sizes = shared.head_sizes[layer]
        assert len(set(sizes[:8].tolist())) == 1 and len(set(sizes[8:].tolist())) == 1
        multipliers = shared.head_multipliers[layer]
        assert (multipliers % 2 == 1).all() and len({tuple(m) for m in multipliers.tolist()}) == 8
        np.testing.assert_array_equal(multipliers[0], ref.multipliers[layer])  # head 0 mixes as the reference does
    rows, reference = shared.hash_sequences(ids, np.array([0]))[1], ref.hash_sequences(ids, np.array([0]))[1]
    np.testing.assert_array_equal(rows[:, 0], reference[:, 0])  # ... and, on the first layer's first prime, reads its rows
    assert all(not np.array_equal(rows[:, 0], rows[:, j]) for j in range(1, 8))


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_a_scenario_runs_with_each_alternative(name, tmp_path):
    from tests.test_errors import _scenario

    out = tmp_path / "out"
    assert main(["run", _scenario(tmp_path), "--set", f"strategies.hashing={name}", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["scenario"]["strategies"]["hashing"]["name"] == name


# ---- the command line -----------------------------------------------------------------------------
def test_collisions_prints_the_table_and_writes_the_json(tmp_path, capsys, measured):
    out = tmp_path / "sub" / "q.json"
    assert main(["collisions", "cpython-docs", "--sizes", "1e5,1000000", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in BUILTIN_PLUGINS:
        assert name in printed
    assert "100,000" in printed and "1,000,000" in printed and "55.06%" in printed
    doc = json.loads(out.read_text())
    assert doc["trace"] == "cpython-docs" and doc["layer"] == 1 and doc["sizes"] == [100_000, 1_000_000]
    expected = [r.to_dict() for r in measured if r.rows_per_head != 10_000]
    assert doc["results"] == json.loads(json.dumps(expected))
    first = out.read_bytes()
    assert main(["collisions", "cpython-docs", "--sizes", "1e5,1000000", "--json", str(out)]) == 0
    assert out.read_bytes() == first  # deterministic


def test_collisions_measures_the_layer_and_plugins_asked_for(tmp_path):
    out = tmp_path / "q.json"
    args = ["collisions", "english-prose", "--plugins", "engram-pow2-mask", "--sizes", "4096", "--layers", "2,6", "--layer", "6",
            "--heads", "2", "--max-ngram", "4", "--json", str(out)]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert r["plugin"] == "engram-pow2-mask" and r["layer"] == 6 and [o["order"] for o in r["orders"]] == [2, 3, 4]
    assert all(o["head_sizes"] == [4096, 4096] for o in r["orders"])


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--sizes", "0"], "--sizes: Input should be greater than 0"),
        (["--sizes", "1e20"], "--sizes: Input should be less than or equal to"),
        (["--sizes", "1.5"], "argument --sizes: expected comma-separated whole numbers"),
        (["--heads", "0"], "--heads: Input should be greater than 0"),
        (["--max-ngram", "1"], "--max-ngram: Input should be greater than or equal to 2"),
        (["--layers", "1,1"], "--layers: Engram layers must be distinct"),
        (["--layers", "1,-2"], "--layers: Input should be greater than or equal to 0"),
        (["--layer", "3"], "--layer: expected one of --layers [1, 15], got 3"),
        (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        (["--plugins", "engram,nope"], "--plugins: unknown hashing plugin 'nope'; known: "),
        (["--trace-is-not-a-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(args, expect, tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["collisions", "cpython-docs", *args, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "target, expect",
    [
        (lambda d: ["nope", "--json", str(d / "q.json")], "no shipped trace of that name"),
        (lambda d: ["cpython-docs", "--json", str(d)], "is a folder; expected a file path"),
        (lambda d: ["cpython-docs", "--json", str((d / "f").with_suffix(".txt")) + "/q.json"], "is not a folder"),
    ],
)
def test_bad_trace_or_output_is_one_line(target, expect, tmp_path, capsys):
    (tmp_path / "f.txt").write_text("")
    assert main(["collisions", *target(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]

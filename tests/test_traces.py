"""Traces: the file format, statistics with hand-counted answers, shipped traces, CLI, synthesis."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.tokenizer import default_tokenizer_path
from engramsim.traces.format import Trace, load_trace, save_trace, shipped_traces, tokenizer_info, trace_bytes
from engramsim.traces.stats import (
    coverage,
    layer_rows,
    ngram_stats,
    reuse_distances,
    trace_stats,
    zipf_exponent,
)
from engramsim.traces.synthetic import zipf_trace

SHIPPED = ("cpython-docs", "cpython-stdlib", "english-prose")
TINY_SPEC = EngramHashSpec(layer_ids=(0,), rows_per_head=(1000, 1000), max_ngram=3, heads=1)


def tiny(tokens=(5, 6, 5, 6, 5), offsets=(0,), **meta) -> Trace:
    """A trace of compressed ids (tokenizer null), so the answers do not depend on a vocabulary."""
    return Trace(np.array(tokens), np.array(offsets), {"name": "tiny", "tokenizer": None, **meta})


def brute_reuse(seq) -> list[int]:
    last: dict[int, int] = {}
    out = []
    for i, x in enumerate(seq):
        out.append(len(set(seq[last[x] + 1 : i])) if x in last else -1)
        last[x] = i
    return out


# ---- format -----------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    trace = Trace.from_documents([[1, 2, 3], [4, 5]], name="rt", source="hand", licence="CC0-1.0", tokenizer=None)
    path = save_trace(trace, tmp_path / "rt.npz")
    back = load_trace(path)
    assert back.tokens.dtype == np.uint32 and back.doc_offsets.dtype == np.int64
    assert back.tokens.tolist() == [1, 2, 3, 4, 5]
    assert back.doc_offsets.tolist() == [0, 3]
    assert [d.tolist() for d in back.documents()] == [[1, 2, 3], [4, 5]]
    assert len(back) == 5 and back.n_documents == 2
    assert back.meta == trace.meta
    assert back.meta["token_count"] == 5 and back.meta["documents"] == 2 and back.meta["format_version"] == 1
    # deterministic bytes, and a plain .npz numpy reads
    assert path.read_bytes() == trace_bytes(back)
    with np.load(path) as npz:
        assert json.loads(str(npz["meta"]))["name"] == "rt"


def test_trace_rejects_broken_structure():
    with pytest.raises(ValueError):
        Trace(np.array([1, 2, 3]), np.array([1]))  # does not start at 0
    with pytest.raises(ValueError):
        Trace(np.array([1, 2, 3]), np.array([0, 2, 2]))  # empty document
    with pytest.raises(ValueError):
        Trace(np.array([1, 2, 3]), np.array([0, 3]))  # document past the end
    with pytest.raises(ValueError):
        Trace.from_documents([[1], []])


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.npz"
    save_trace(tiny(), path)
    return path


def _rewrite(path, members: dict) -> None:
    """Write an .npz with the given arrays (no checks), the way a buggy writer might."""
    with open(path, "wb") as fh:
        np.savez(fh, **members)


def _assert_input_error(path, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        load_trace(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_missing_and_unreadable_files(tmp_path):
    _assert_input_error(tmp_path / "nope.npz", "cannot read")
    _assert_input_error(tmp_path, "cannot read")  # a folder
    with pytest.raises(InputError, match="no shipped trace"):
        load_trace("no-such-trace")


def test_truncated_and_corrupt_files(saved, tmp_path):
    data = saved.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    _assert_input_error(cut, "corrupt or truncated")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all" * 10)
    _assert_input_error(junk, "corrupt or truncated")
    flipped = bytearray(data)
    flipped[60:80] = bytes(20)  # damage the first member's compressed data
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(flipped))
    _assert_input_error(bad, "trace file")


def test_inconsistent_files(saved, tmp_path):
    good = load_trace(saved)
    meta = json.dumps(good.meta)
    cases = {
        "missing.npz": ({"tokens": good.tokens, "meta": np.array(meta)}, "missing array(s) doc_offsets"),
        "sha.npz": ({"tokens": good.tokens + np.uint32(1), "doc_offsets": good.doc_offsets, "meta": np.array(meta)}, "tokens_sha256"),
        "dtype.npz": ({"tokens": good.tokens.astype(np.int64), "doc_offsets": good.doc_offsets, "meta": np.array(meta)}, "uint32"),
        "offsets.npz": ({"tokens": good.tokens, "doc_offsets": np.array([0, 3, 2]), "meta": np.array(meta)}, "strictly increasing"),
        "json.npz": ({"tokens": good.tokens, "doc_offsets": good.doc_offsets, "meta": np.array("{not json")}, "not valid JSON"),
        "count.npz": (
            {"tokens": good.tokens, "doc_offsets": good.doc_offsets, "meta": np.array(json.dumps({**good.meta, "documents": 7}))},
            "documents",
        ),
    }
    for name, (members, fragment) in cases.items():
        path = tmp_path / name
        _rewrite(path, members)
        _assert_input_error(path, fragment)
    pickled = tmp_path / "pickled.npz"
    _rewrite(pickled, {"tokens": good.tokens, "doc_offsets": good.doc_offsets, "meta": np.array([good.meta], dtype=object)})
    _assert_input_error(pickled, "trace file")


# ---- statistics -------------------------------------------------------------------------------
def test_ngram_stats_by_hand():
    t = tiny()  # 5 6 5 6 5
    uni, bi, tri = (ngram_stats(t.tokens, t.doc_offsets, n) for n in (1, 2, 3))
    assert (uni.occurrences, uni.distinct, uni.top_1pct_coverage) == (5, 2, 3 / 5)
    # 2-grams 56 65 56 65: two distinct, each twice; top 1% = top 10% = one n-gram
    assert (bi.occurrences, bi.distinct, bi.top_1pct_coverage, bi.top_10pct_coverage) == (4, 2, 0.5, 0.5)
    # 3-grams 565 656 565
    assert (tri.occurrences, tri.distinct, tri.top_1pct_coverage) == (3, 2, 2 / 3)
    assert tri.zipf_exponent is None  # nothing to fit


def test_ngrams_stop_at_document_boundaries():
    t = tiny(offsets=(0, 3))  # [5 6 5] [6 5]
    bi, tri = ngram_stats(t.tokens, t.doc_offsets, 2), ngram_stats(t.tokens, t.doc_offsets, 3)
    assert (bi.occurrences, bi.distinct) == (3, 2)  # 56 65 | 65
    assert (tri.occurrences, tri.distinct) == (1, 1)  # 565 |


def test_coverage_and_zipf_fit():
    assert coverage(np.array([50, 30, 10, 5, 5]), 0.10) == 0.5
    assert coverage(np.array([], dtype=np.int64), 0.01) == 0.0
    ranks = np.arange(1, 20001)
    for s in (0.8, 1.0, 1.3):
        counts = np.floor(1e7 * ranks**-s).astype(np.int64)
        fitted, r_max = zipf_exponent(counts)
        assert fitted == pytest.approx(s, abs=0.01) and r_max > 1000


def test_reuse_distances_by_hand_and_brute_force():
    assert reuse_distances(np.array([0, 1, 0, 2, 1, 1, 0])).tolist() == [-1, -1, 1, -1, 2, 0, 2]
    assert reuse_distances(np.array([], dtype=np.int64)).tolist() == []
    rng = np.random.default_rng(7)
    for _ in range(50):
        seq = rng.integers(0, rng.integers(1, 40), rng.integers(1, 300))
        assert reuse_distances(seq).tolist() == brute_reuse(seq.tolist())
    seq = rng.integers(0, 200, 40_000)  # longer than a chunk (2^14): global and chunked levels
    rare = rng.choice(seq.size, 60, replace=False)
    seq[rare] = rng.integers(1000, 1005, rare.size)  # a few long reuse intervals
    assert reuse_distances(seq).tolist() == brute_reuse(seq.tolist())


def test_reuse_stats_by_hand():
    t = tiny()  # 5 6 5 6 5 with the pad (2) before it
    hashing = EngramHashing(TINY_SPEC, 100, 2)
    rows = layer_rows(t.tokens.astype(np.int64), t.doc_offsets, hashing, 0)
    # 2-gram head: (2,5) (5,6) (6,5) (5,6) (6,5); 3-gram head: (2,2,5) (2,5,6) (5,6,5) (6,5,6) (5,6,5)
    assert len(set(rows[:, 0].tolist())) == 3 and len(set(rows[:, 1].tolist())) == 4  # no collisions
    assert rows[1, 0] == rows[3, 0] and rows[2, 0] == rows[4, 0] and rows[2, 1] == rows[4, 1]
    stats = trace_stats(t, TINY_SPEC)
    r = stats.reuse
    # stream A2 A3 B2 B3 C2 C3 B2 D3 C2 C3: 7 first accesses; each re-access skips 3 distinct rows
    assert (r.accesses, r.distinct_rows, r.first_access_share) == (10, 7, 0.7)
    assert (r.p50, r.p90, r.p99) == (3, 3, 3)
    assert r.table_rows == int(hashing.primes[0].sum())
    assert stats.ngram(2).distinct == 2
    json.dumps(stats.to_dict())  # JSON-ready


def test_stats_refuse_another_tokenizer():
    t = tiny(tokenizer={"file": "tokenizer.json", "sha256": "0" * 64})
    with pytest.raises(InputError, match="tokenized with"):
        trace_stats(t, TINY_SPEC)


# ---- shipped traces ---------------------------------------------------------------------------
def test_shipped_traces():
    assert set(SHIPPED) <= set(shipped_traces())
    digest = tokenizer_info(default_tokenizer_path())["sha256"]
    for name in SHIPPED:
        trace = load_trace(name)
        assert len(trace) >= 200_000, name
        assert trace.name == name
        assert trace.meta["licence"] and trace.meta["source"] and trace.meta["created_by"]
        assert trace.meta["tokenizer"]["sha256"] == digest
        assert len(trace.meta["document_names"]) == trace.n_documents
        assert int(trace.tokens.max()) < 129_280


# ---- CLI --------------------------------------------------------------------------------------
def test_cli_stats_shipped(capsys):
    assert main(["trace", "stats", "cpython-docs"]) == 0
    out = capsys.readouterr().out
    assert "cpython-docs" in out and "reuse p99" in out and "Zipf s" in out


def test_cli_stats_json_and_bad_layer(tmp_path, capsys):
    path = tmp_path / "syn.npz"
    assert main(["trace", "synth", "--tokens", "3000", "--exponent", "1.1", "--seed", "1", "--out", str(path)]) == 0
    capsys.readouterr()
    assert main(["trace", "stats", str(path), "--json", "--layers", "1,15", "--layer", "15"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"] == 3000 and data["reuse"]["layer"] == 15
    assert [n["order"] for n in data["ngrams"]] == [1, 2, 3]
    assert main(["trace", "stats", str(path), "--layer", "3"]) == 2
    assert "--layer" in capsys.readouterr().err
    assert main(["trace", "stats", str(tmp_path / "absent.npz")]) == 2


def test_cli_build(tmp_path, capsys):
    a, b = tmp_path / "a.py", tmp_path / "b.txt"
    a.write_text("def f(x):\n    return x + 1\n", encoding="utf-8")
    b.write_text("Hello, Engram.", encoding="utf-8")
    out = tmp_path / "t.npz"
    args = ["trace", "build", "--text", str(a), str(b), "--out", str(out), "--licence", "MIT", "--quiet"]
    assert main(args) == 0
    trace = load_trace(out)
    assert trace.n_documents == 2 and trace.name == "t" and trace.meta["licence"] == "MIT"
    assert trace.meta["created_by"].startswith("engramsim trace build --text")
    assert trace.meta["document_names"] == [str(a), str(b)]


@pytest.mark.parametrize("content", [b"", b"  \n\t", b"\xff\xfe bad"])
def test_cli_build_bad_text(tmp_path, capsys, content):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine text", encoding="utf-8")
    bad.write_bytes(content)
    out = tmp_path / "t.npz"
    assert main(["trace", "build", "--text", str(good), str(bad), "--out", str(out), "--quiet"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == {good, bad}  # no output, no temporary left behind
    assert main(["trace", "build", "--text", str(tmp_path / "missing.txt"), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()


# ---- synthetic --------------------------------------------------------------------------------
def test_synthetic_is_deterministic():
    a, b = zipf_trace(20_000, 1.0, seed=3), zipf_trace(20_000, 1.0, seed=3)
    assert np.array_equal(a.tokens, b.tokens) and a.meta == b.meta
    assert not np.array_equal(a.tokens, zipf_trace(20_000, 1.0, seed=4).tokens)
    assert len(a) == 20_000 and a.doc_offsets.tolist() == list(range(0, 20_000, 2048))
    assert a.meta["tokenizer"] is None and int(a.tokens.max()) < 99_092


def test_synthetic_exponent_controls_skew():
    def top1(s: float, order: int) -> float:
        t = zipf_trace(50_000, s, seed=0)
        return ngram_stats(t.tokens, t.doc_offsets, order).top_1pct_coverage

    for order in (2, 3):
        assert top1(0.7, order) < top1(1.0, order) < top1(1.3, order)


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        zipf_trace(0, 1.0)
    with pytest.raises(ValueError):
        zipf_trace(10, -1.0)
    assert main(["trace", "synth", "--tokens", "10", "--exponent", "nan", "--out", str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()


def test_npz_members_are_plain_arrays(saved):
    with zipfile.ZipFile(saved) as zf:
        assert sorted(zf.namelist()) == ["doc_offsets.npy", "meta.npy", "tokens.npy"]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())

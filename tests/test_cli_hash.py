import numpy as np
import pytest

from engramsim.cli import main

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text(TEXT)
    return p


def test_hash_writes_the_documented_arrays(text, tmp_path, tokenizer, vocab):
    out = tmp_path / "rows.npz"
    rc = main(["hash", "--text", str(text), "--layers", "1,15", "--rows-per-head", "646400,646400",
               "--max-ngram", "3", "--heads", "8", "--seed", "0", "--out", str(out)])
    assert rc == 0
    z = np.load(out)
    raw = tokenizer.encode(TEXT, add_special_tokens=False).ids
    assert z["compressed_ids"].tolist() == vocab.compress(np.array(raw)).tolist()
    for layer in (1, 15):
        assert z[f"layer_{layer}"].shape == (len(raw), 16) and z[f"layer_{layer}"].dtype == np.int64
        assert z[f"primes_layer_{layer}"].shape == (16,)
    assert z["primes_layer_1"][:3].tolist() == [646403, 646411, 646421]
    assert z["primes_layer_15"][-1] == 646879


def _bad(tmp_path, capsys, args, expect):
    out = tmp_path / "out.npz"
    rc = main(["hash", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and expect in err, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))


def test_missing_tokenizer(text, tmp_path, capsys):
    _bad(tmp_path, capsys, ["--text", str(text), "--tokenizer", str(tmp_path / "missing.json")], "missing.json: tokenizer file not found")


def test_corrupt_tokenizer(text, tmp_path, capsys):
    bad = tmp_path / "tok.json"
    bad.write_text('{"model": 3}')
    _bad(tmp_path, capsys, ["--text", str(text), "--tokenizer", str(bad)], "tok.json: not a valid tokenizer.json")


def test_empty_text(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _bad(tmp_path, capsys, ["--text", str(empty)], "empty.txt: text file is empty")


def test_non_utf8_text(tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    _bad(tmp_path, capsys, ["--text", str(latin)], "latin.txt: not UTF-8 text")


def test_missing_text(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--text", str(tmp_path / "gone.txt")], "gone.txt: cannot read text file")


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--layers", "1,-2"], "--layers: expected non-negative layer ids"),
        (["--rows-per-head", "0"], "--rows-per-head: expected positive sizes"),
        (["--rows-per-head", "5,5,5"], "--rows-per-head: expected 1 or 2 values"),
        (["--max-ngram", "1"], "--max-ngram: expected an integer >= 2"),
        (["--heads", "0"], "--heads: expected a positive integer"),
        (["--layers", "a,b"], "expected comma-separated integers"),
    ],
)
def test_bad_numbers(text, tmp_path, capsys, args, expect):
    _bad(tmp_path, capsys, ["--text", str(text), *args], expect)

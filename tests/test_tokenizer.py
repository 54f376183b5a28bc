import time

import numpy as np
import pytest

from engramsim.errors import InputError
from engramsim.tokenizer import compressed_vocab, default_tokenizer_path, load_tokenizer


def test_deepseek_v4_compresses_to_99092(vocab):
    assert vocab.raw_size == 129_280
    assert vocab.size == 99_092
    assert vocab.table[:3].tolist() == [0, 1, 2]


def test_case_and_space_variants_share_an_id(vocab, tokenizer):
    ids = [tokenizer.token_to_id(t) for t in ("Hello", "hello", "ĠHello", "Ġhello")]
    assert None not in ids
    assert len({int(vocab.table[i]) for i in ids}) == 1


def test_negative_ids_pass_through(vocab):
    out = vocab.compress(np.array([-1, 0, -5, 2]))
    assert out.tolist() == [-1, 0, -5, int(vocab.table[2])]


def test_out_of_vocab_id_rejected(vocab):
    with pytest.raises(ValueError):
        vocab.compress(np.array([vocab.raw_size]))


def test_cache_round_trip_is_fast_and_identical(tmp_path, monkeypatch, vocab):
    monkeypatch.setenv("ENGRAMSIM_CACHE", str(tmp_path))
    compressed_vocab.cache_clear()
    built = compressed_vocab()
    assert not built.from_cache and list(tmp_path.glob("compressed-vocab-*.npy"))
    compressed_vocab.cache_clear()
    start = time.perf_counter()
    cached = compressed_vocab()
    assert time.perf_counter() - start < 1.0
    assert cached.from_cache and np.array_equal(cached.table, built.table)
    compressed_vocab.cache_clear()


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAMSIM_CACHE", str(tmp_path))
    compressed_vocab.cache_clear()
    compressed_vocab()
    (entry,) = tmp_path.glob("compressed-vocab-*.npy")
    entry.write_bytes(b"garbage")
    compressed_vocab.cache_clear()
    again = compressed_vocab()
    assert not again.from_cache and again.size == 99_092
    compressed_vocab.cache_clear()


def test_missing_and_corrupt_tokenizer_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(InputError, match="not a valid tokenizer.json"):
        compressed_vocab(bad)


def test_default_tokenizer_ships_with_the_package():
    assert default_tokenizer_path().is_file()

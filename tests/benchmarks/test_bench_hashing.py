"""Hashing speed, demo config (2 layers, 2/3-grams, 8 heads), 1M tokens: ours vs the reference loop."""

import time

import numpy as np
import pytest

from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.tokenizer import build_lookup_table, compressed_vocab, load_tokenizer
from tests.reference_engram import reference_hash

TOKENS = 1_000_000
SPEC = EngramHashSpec(layer_ids=(1, 15), rows_per_head=(646400, 646400), max_ngram=3, heads=8, seed=0)


@pytest.fixture(scope="module")
def setup(vocab):
    hashing = EngramHashing(SPEC, vocab.size, int(vocab.table[2]))
    ids = np.random.default_rng(0).integers(0, vocab.size, size=TOKENS)
    return hashing, ids


def _baseline(hashing, ids):
    return {
        layer: reference_hash(ids, hashing.multipliers[layer], hashing.primes[layer], SPEC.max_ngram, SPEC.heads, hashing.pad_id)
        for layer in SPEC.layer_ids
    }


def _best_of(fn, rounds=3):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.benchmark(group="hashing-1M-tokens")
def test_hashing_vs_reference_loop(benchmark, compare, setup):
    hashing, ids = setup
    head_ids = TOKENS * SPEC.heads_per_layer * len(SPEC.layer_ids)
    result = benchmark.pedantic(hashing.hash, args=(ids,), rounds=5, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    baseline = _best_of(lambda: _baseline(hashing, ids))
    speedup = baseline / ours
    benchmark.extra_info.update(ours_M_ids_s=head_ids / ours / 1e6, baseline_M_ids_s=head_ids / baseline / 1e6, speedup=speedup)
    compare("hashing 1M tokens x 2 layers x 16 heads (target >= 2x)",
            ours=f"EngramHashing.hash {ours * 1e3:.0f} ms ({head_ids / ours / 1e6:.0f} M ids/s)",
            baseline=f"reference loop-and-stack {baseline * 1e3:.0f} ms ({head_ids / baseline / 1e6:.0f} M ids/s)", ratio=speedup)
    assert np.array_equal(result[15][:1000], _baseline(hashing, ids[:1000])[15][0])
    assert speedup >= 2.0


@pytest.mark.benchmark(group="vocab-cache")
def test_compressed_vocab_from_cache(benchmark, compare):
    compressed_vocab()  # make sure the cache entry exists

    def load():
        compressed_vocab.cache_clear()
        return compressed_vocab()

    vocab = benchmark.pedantic(load, rounds=5)
    cached = benchmark.stats.stats.mean
    start = time.perf_counter()
    build_lookup_table(load_tokenizer())  # what a cold cache costs: walking the tokenizer's vocabulary
    built = time.perf_counter() - start
    compare("compressed vocabulary (target >= 10x)", ours=f"from the disk cache {cached * 1e3:.1f} ms",
            baseline=f"built from the tokenizer {built * 1e3:.0f} ms", ratio=built / cached)
    assert vocab.from_cache and built / cached >= 10

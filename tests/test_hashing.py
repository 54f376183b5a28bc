import numpy as np
import pytest
import torch

from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec, layer_multipliers
from engramsim.plugins.hashing.primes import is_prime, next_prime
from engramsim.registry import get
from tests.reference_engram import reference_hash

DEMO = EngramHashSpec(layer_ids=(1, 15), rows_per_head=(646400, 646400), max_ngram=3, heads=8, seed=0)


@pytest.fixture(scope="module")
def demo(vocab):
    return EngramHashing(DEMO, vocab.size, int(vocab.table[DEMO.pad_id]))


@pytest.fixture(scope="module")
def text_ids(vocab, tokenizer):
    import engramsim

    text = open(engramsim.tokenizer.__file__, encoding="utf-8").read() * 12
    return vocab.compress(np.array(tokenizer.encode(text, add_special_tokens=False).ids))


def test_known_primes_and_total_rows(demo):
    assert demo.primes[1][:3].tolist() == [646403, 646411, 646421]
    assert demo.primes[1][8:10].tolist() == [646537, 646543]
    assert int(demo.primes[15][-1]) == 646879
    assert sum(demo.rows_per_layer.values()) == 20_692_406
    every = np.concatenate(list(demo.primes.values()))
    assert len(set(every.tolist())) == every.size, "every head has its own prime"
    assert all(is_prime(int(p)) for p in every)


def test_offsets_are_exclusive_prefix_sums(demo):
    p = demo.primes[15]
    assert demo.offsets[15].tolist() == [int(p[:k].sum()) for k in range(p.size)]


def test_multipliers_odd_and_per_layer(vocab):
    m = layer_multipliers(DEMO, vocab.size)
    assert all((v % 2 == 1).all() for v in m.values())
    assert not np.array_equal(m[1], m[15])
    half = (np.iinfo(np.int64).max // vocab.size) // 2
    r = np.random.default_rng(0 + 10007 * 15).integers(0, half, size=3, dtype=np.int64)
    assert m[15].tolist() == (2 * r + 1).tolist()


@pytest.mark.parametrize("rows", [(646400, 646400), (3_000_000, 40_000_000), (100_000_000, 7)])
def test_matches_reference_on_real_text(vocab, text_ids, rows):
    spec = EngramHashSpec(layer_ids=(2, 15), rows_per_head=rows, max_ngram=3, heads=8, seed=7)
    h = EngramHashing(spec, vocab.size, int(vocab.table[2]))
    batch = np.stack([text_ids[:4000], text_ids[4000:8000]])
    ours = h.hash(batch)
    for layer in spec.layer_ids:
        ref = reference_hash(batch, h.multipliers[layer], h.primes[layer], 3, 8, h.pad_id)
        np.testing.assert_array_equal(ours[layer], ref)


def test_numpy_torch_parity(demo, text_ids):
    ids = text_ids[:100_000]  # several chunks, so the threaded path runs
    ours = demo.hash(ids)
    theirs = demo.hash_torch(torch.from_numpy(ids))
    for layer in DEMO.layer_ids:
        assert ours[layer].shape == (ids.size, 16)
        np.testing.assert_array_equal(ours[layer], theirs[layer].numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_numpy_cuda_parity(demo, text_ids):
    ids = text_ids[:50_000]
    theirs = demo.hash_torch(torch.from_numpy(ids).cuda())
    ours = demo.hash(ids)
    for layer in DEMO.layer_ids:
        np.testing.assert_array_equal(ours[layer], theirs[layer].cpu().numpy())


def test_extreme_mixes_hash_exactly(demo):
    """Ids whose products wrap int64 in every direction still match integer `%`."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 99_092, size=(3, 70_000))
    ids[0, :10] = 99_091
    for layer in DEMO.layer_ids:
        ref = reference_hash(ids, demo.multipliers[layer], demo.primes[layer], 3, 8, demo.pad_id)
        np.testing.assert_array_equal(demo.hash(ids)[layer], ref)


def test_pad_fills_positions_before_the_start(demo, vocab):
    pad = int(vocab.table[2])
    assert pad == demo.pad_id
    seq = np.array([10, 11, 12])
    with_pad = demo.hash(np.array([pad, pad, 10, 11, 12]))
    np.testing.assert_array_equal(demo.hash(seq)[1], with_pad[1][2:])


def test_rows_are_in_range_and_batch_rows_independent(demo, text_ids):
    batch = np.stack([text_ids[:500], text_ids[500:1000]])
    out = demo.hash(batch)[1]
    assert (out >= 0).all() and (out < demo.primes[1]).all()
    np.testing.assert_array_equal(out[1], demo.hash(text_ids[500:1000])[1])


def test_registered_as_engram():
    assert get("hashing", "engram") is EngramHashing


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_ngram=1, rows_per_head=()),
        dict(heads=0),
        dict(layer_ids=(-1,)),
        dict(layer_ids=()),
        dict(rows_per_head=(10, 0)),
        dict(rows_per_head=(10,)),
    ],
)
def test_spec_rejects_bad_values(kwargs):
    base = dict(layer_ids=(1,), rows_per_head=(10, 10), max_ngram=3, heads=2)
    with pytest.raises(ValueError):
        EngramHashSpec(**{**base, **kwargs})


def test_next_prime_skips_taken():
    assert next_prime(10, set()) == 11
    assert next_prime(10, {11}) == 13
    assert [p for p in range(2, 40) if is_prime(p)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    assert is_prime(2_147_483_647) and not is_prime(2_147_483_647 * 3)


def test_ragged_sequences_match_one_by_one(demo, text_ids):
    lengths = [1, 2, 700, 3, 1500, 40]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = text_ids[: sum(lengths)]
    out = demo.hash_sequences(flat, starts)
    for start, n in zip(starts, lengths):
        one = demo.hash(flat[start : start + n])
        for layer in DEMO.layer_ids:
            np.testing.assert_array_equal(out[layer][start : start + n], one[layer])

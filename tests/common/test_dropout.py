"""common.dropout: hashed masks keep 1 − rate of the elements, independently across positions
and seeds, reproducibly; dropout rescales the kept ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.dropout import SeedSequence, dropout, fold_seed, hashed_bits, keep_mask, mix32

N = 1 << 20


def _within(frac: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(frac - p) <= sigmas * np.sqrt(p * (1 - p) / n)


def test_mix32_is_a_bijection_on_a_block_and_hashed_bits_are_uniform():
    v = np.asarray(mix32(jnp.arange(N, dtype=jnp.uint32)))
    assert len(np.unique(v)) == N  # no collisions on 2^20 inputs
    bits = np.asarray(hashed_bits(jnp.uint32(7), (N,)))
    assert len(np.unique(bits)) == N  # a bijection of the index for a fixed seed
    for b in (0, 13, 31):  # every bit is a fair coin
        assert _within(float(np.mean((bits >> b) & 1)), 0.5, N)
    hist = np.histogram(bits.astype(np.float64), bins=16, range=(0, 2.0**32))[0]
    assert all(_within(h / N, 1 / 16, N) for h in hist)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_fraction_and_independence(rate):
    keep = np.asarray(keep_mask(jnp.uint32(3), (N,), rate)).astype(np.float64)
    p = 1 - rate
    assert _within(keep.mean(), p, N)
    # neighbours and strided positions (rows of a [.., 128] activation) are independent
    for lag in (1, 128):
        assert _within(float(np.mean(keep[:-lag] * keep[lag:])), p * p, N - lag)
    # another seed (the next call site / step) gives an independent mask
    other = np.asarray(keep_mask(fold_seed(3, 1), (N,), rate)).astype(np.float64)
    assert _within(float(np.mean(keep * other)), p * p, N)


def test_dropout_rescales_is_reproducible_and_off_without_a_seed():
    x = jnp.ones((64, 512))
    y = np.asarray(dropout(x, 0.1, jnp.uint32(5)))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.9)}
    assert _within(float(np.mean(y > 0)), 0.9, y.size)
    np.testing.assert_array_equal(np.asarray(jax.jit(dropout, static_argnums=1)(x, 0.1, 5)), y)
    assert not np.array_equal(np.asarray(dropout(x, 0.1, jnp.uint32(6))), y)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, 5) is x
    with pytest.raises(ValueError, match="rate"):
        keep_mask(0, (3,), 1.0)


def test_seed_sequence_gives_a_different_seed_per_call():
    seq = SeedSequence(jnp.uint32(9))
    seeds = [int(seq()) for _ in range(50)]
    assert len(set(seeds)) == 50
    assert SeedSequence(None)() is None
    assert [int(s) for s in (fold_seed(9, 1), fold_seed(9, 2))] == seeds[:2]


def test_seeds_are_not_re_indexings_of_one_stream():
    """The number kept in a 2^12 block varies across seeds as a binomial would (seeds that
    only permuted one fixed stream would keep exactly the same number every time)."""
    counts = [int(np.sum(np.asarray(keep_mask(fold_seed(1, s), (4096,), 0.1)))) for s in range(40)]
    assert len(set(counts)) > 10
    assert 0.5 < np.std(counts) / np.sqrt(4096 * 0.9 * 0.1) < 2.0

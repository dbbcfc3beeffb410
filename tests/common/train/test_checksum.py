"""Per-array checksums: every flipped bit is caught, positions matter, dtypes, layouts.

(That a sharded array gives the single-device value: tests/projects/lm/_finetune_cases.py.)
"""

import jax.numpy as jnp
import numpy as np
import pytest

from common.train.checksum import host_checksums, json_crc, leaf_checksum, tree_checksums


def flip_bit(x: np.ndarray, flat_index: int, bit: int) -> np.ndarray:
    y = x.copy()
    raw = y.reshape(-1).view(np.uint8)
    raw[flat_index * x.itemsize + bit // 8] ^= np.uint8(1 << (bit % 8))
    return y


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.int32, np.uint8])
def test_every_single_bit_flip_changes_the_checksum(dtype):
    x = (np.random.default_rng(0).standard_normal((3, 5)) * 50).astype(dtype)
    base = np.asarray(leaf_checksum(x))
    bits = x.itemsize * 8
    for i in range(x.size):
        for b in range(bits):
            got = np.asarray(leaf_checksum(flip_bit(x, i, b)))
            assert (got != base).all(), (i, b)  # both sums see it


def test_swapping_two_elements_changes_the_checksum():
    # a plain sum (or XOR) of the elements would not notice a permutation
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = x.copy()
    y[0, 1, 2], y[1, 2, 3] = x[1, 2, 3], x[0, 1, 2]
    assert (np.asarray(leaf_checksum(y)) != np.asarray(leaf_checksum(x))).all()
    # and a transposed layout of the same elements is another array
    sq = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert (np.asarray(leaf_checksum(sq.T.copy())) != np.asarray(leaf_checksum(sq))).any()


def test_tree_rows_follow_the_leaves_and_match_host_values():
    tree = {"a": jnp.ones((2, 2)), "b": {"c": jnp.zeros((), jnp.int32), "d": jnp.array([True])}}
    rows = np.asarray(tree_checksums(tree))
    assert rows.shape == (3, 2) and rows.dtype == np.uint32
    np.testing.assert_array_equal(rows[0], leaf_checksum(tree["a"]))
    assert host_checksums(tree) == rows.astype(np.int64).tolist()
    assert host_checksums({}) == []


def test_json_crc_ignores_key_order_only():
    assert json_crc({"a": 1, "b": [2, 3]}) == json_crc({"b": [2, 3], "a": 1})
    assert json_crc({"a": 1, "b": [2, 3]}) != json_crc({"a": 1, "b": [3, 2]})


def test_64_bit_leaves_are_refused():
    with pytest.raises(TypeError, match="64-bit"):
        leaf_checksum(np.zeros(2, np.float64).view(np.complex128))

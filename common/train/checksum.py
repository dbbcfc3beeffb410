"""Checksums of every array of a pytree, computed where the arrays live (sharded, on device).

``tree_checksums(tree) -> uint32 [n_leaves, 2]``: for each leaf, two position-weighted sums of
its bit patterns modulo 2**32,

    s_j = sum_{i_1..i_n} bits(x[i_1, ..., i_n]) * w_j1(i_1) * ... * w_jn(i_n)  (mod 2**32),

where ``bits`` reinterprets the element's bytes as an unsigned integer (float32 -> uint32,
bfloat16 -> uint16 widened) and ``w_jk`` is an odd hash of the index along axis ``k`` (two hash
constants ``j``). A product of odd numbers is odd, hence invertible modulo 2**32, so any change
of one element's bits (by ``d != 0``, ``|d| < 2**32``) changes each sum by ``d * w != 0``: a
flipped bit or byte is always detected; moving values between positions changes the sums too
(unless their weights collide). The weights are separable, so each sum is a chain of
reductions, one axis at a time (a multiply and an add per element for the first axis, the rest
on what is left): one pass over the array. Modular sums are associative and commutative, so the
value does not depend on the sharding or the reduction order (a checkpoint saved on one mesh
verifies when restored on another).

The data-iterator state (JSON) is checked with :func:`json_crc`.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# two odd hash constants per sum (golden-ratio and murmur finaliser constants)
_MIX = ((0x9E3779B1, 0x85EBCA77), (0xC2B2AE3D, 0x27D4EB2F))


def _bits(x: jax.Array) -> jax.Array:
    """The elements' bit patterns as uint32 (same shape)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    if width > 4:
        raise TypeError(f"tree_checksums: {x.dtype} leaves are not supported (64-bit)")
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _axis_weights(n: int, axis: int, mix: tuple[int, int]) -> jax.Array:
    """Odd uint32 weights ``[n]`` for the positions along one axis."""
    w = (jnp.arange(n, dtype=jnp.uint32) + jnp.uint32(1 + 7919 * axis)) * jnp.uint32(mix[0])
    w = (w ^ (w >> jnp.uint32(15))) * jnp.uint32(mix[1])
    return (w ^ (w >> jnp.uint32(13))) | jnp.uint32(1)


def leaf_checksum(x: jax.Array) -> jax.Array:
    """``uint32 [2]``: the two weighted sums of ``x``'s bit patterns (module docstring)."""
    x = jnp.asarray(x)
    bits = _bits(x)
    sums = []
    for mix in _MIX:
        acc = bits
        for axis in reversed(range(bits.ndim)):  # the last axis first: contiguous reads
            acc = jnp.sum(acc * _axis_weights(bits.shape[axis], axis, mix), axis=-1,
                          dtype=jnp.uint32)
        sums.append(acc)
    return jnp.stack(sums)


@jax.jit
def tree_checksums(tree: Any) -> jax.Array:
    """``uint32 [n_leaves, 2]``, one row per leaf of ``tree`` in flatten order."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([leaf_checksum(x) for x in leaves])


def host_checksums(tree: Any) -> list[list[int]]:
    """:func:`tree_checksums` fetched to the host as ``[[s0, s1], ...]`` (JSON-able)."""
    with jax.transfer_guard("allow"):
        return np.asarray(jax.device_get(tree_checksums(tree))).astype(np.int64).tolist()


def json_crc(value: Any) -> int:
    """CRC-32 of ``value``'s canonical JSON (sorted keys): the data-state checksum."""
    return zlib.crc32(json.dumps(value, sort_keys=True).encode())

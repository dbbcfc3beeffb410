"""Checksums of every array of a pytree, computed where the arrays live (sharded, on device).

``tree_checksums(tree) -> uint32 [n_leaves, 2]``: for each leaf, two position-weighted sums of
its bit patterns modulo 2**32,

    s_j = sum_i bits(x_i) * w_j(i)  (mod 2**32),   w_j(i) odd,

where ``bits`` reinterprets the element's bytes as an unsigned integer (float32 -> uint32,
bfloat16 -> uint16 widened) and ``w_j(i)`` mixes the element's multi-dimensional index with
two different odd constants. Any change of one element's bits changes ``bits(x_i)`` by some
``d != 0`` with ``|d| < 2**32`` and so ``s_j`` by ``d * w_j(i) != 0 (mod 2**32)``, because an odd
weight is invertible modulo 2**32: a flipped bit or byte is always detected. Modular sums are
associative and commutative, so the value does not depend on the sharding or the reduction
order (a checkpoint saved on one mesh verifies when restored on another). The weights come from
per-axis iotas, never a flat index, so leaves beyond 2**31 elements are fine.

The data-iterator state (JSON) is checked with :func:`json_crc`.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# odd multipliers (golden-ratio and murmur constants) for the per-axis index mix
_AXIS_MIX = ((0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C,
              0xFD7046C5, 0xB55A4F09),
             (0x7FEB352D, 0x846CA68B, 0x2545F491, 0x9E485565, 0xEF1626D5, 0x4C957F2D,
              0x5851F42D, 0x14057B7F))


def _bits(x: jax.Array) -> jax.Array:
    """The elements' bit patterns as uint32 (same shape)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    if width > 4:
        raise TypeError(f"tree_checksums: {x.dtype} leaves are not supported (64-bit)")
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _weights(shape: tuple[int, ...], mix: tuple[int, ...]) -> jax.Array:
    """Odd uint32 weights ``[*shape]`` from the element's index along each axis."""
    w = jnp.zeros(shape, jnp.uint32)
    for axis in range(len(shape)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        w = w + (iota + jnp.uint32(axis + 1)) * jnp.uint32(mix[axis % len(mix)])
        w = w ^ (w >> jnp.uint32(15))
    return w | jnp.uint32(1)


def leaf_checksum(x: jax.Array) -> jax.Array:
    """``uint32 [2]``: the two weighted sums of ``x``'s bit patterns (module docstring)."""
    x = jnp.asarray(x)
    bits = _bits(x)
    return jnp.stack([jnp.sum(bits * _weights(x.shape, mix), dtype=jnp.uint32)
                      for mix in _AXIS_MIX])


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

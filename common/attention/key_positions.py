"""Attention whose key positions depend on the query: RoPE applied inside the attention.

RoPE applied once to the keys gives every key one position. Some methods see each key at a
position that depends on the query looking at it: PINE (Wang et al., 2024) re-orders the
segments of a prompt per query token and head, so a segment's keys sit at different positions
for different queries. :func:`rope_attention` takes queries and keys **before** RoPE and the
positions as :class:`KeyPositions`, and rotates inside.

Notation: ``b`` batch, ``h`` query heads, ``kvh`` key/value heads (query head ``h`` reads
key/value head ``h // (heads // kv_heads)``), ``sq`` queries, ``skv`` keys, ``nb`` key blocks.

Key ``j`` seen by query ``i`` at head ``h`` sits at position
``kv[b, j] + shift[b, h, i, block[b, j]]`` and query ``i`` at ``q[b, h, i]``. Any
per-(query, key) positions fit this form (one block per key); PINE uses one block for the keys
outside the segments (shift 0) and one per segment (shift = where the segment starts for that
query), so its ``nb`` is the number of segments plus one.

Two implementations of one function:

* ``reference``: materialises the position of every (query, key) pair and rotates each key
  for each query (``[b, h, sq, skv, head_dim]``): plainly the definition, for tests and small
  inputs.
* ``blocked`` (default): RoPE is relative, ``<R(a) q, R(c + s) k> = <R(a - s) q, R(c) k>``, so
  each query is rotated once per block (``a - shift``), each key once (``c``), and the
  logits are one contraction over ``(block, head_dim)`` with each key placed in its block's
  slot: ``nb`` times the product of plain attention, no per-pair rotation. Queries run in
  chunks of ``chunk`` rows, which bounds the ``[b, h, chunk, nb, head_dim]`` rotated queries
  and the logits held at once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from common.attention.core import AttentionOutput, head_scale
from common.attention.masks import Mask
from common.attention.rope import RoPE

IMPLEMENTATIONS = ("blocked", "reference")


@struct.dataclass
class KeyPositions:
    """RoPE positions of queries, and of keys as seen by each query (see the module docstring).

    Attributes:
      q: ``[batch, heads, q_len]`` int positions of the queries.
      kv: ``[batch, kv_len]`` int base positions of the keys.
      block: ``[batch, kv_len]`` int in ``[0, n_blocks)``: the block of each key.
      shift: ``[batch, heads, q_len, n_blocks]`` int: added to the base position of the keys
        of each block, per query and head.
      vanilla_rows: optional ``[batch, q_len]`` bool: rows whose attention the caller computes
        with the plain path (the model's own RoPE and mask) instead, so that they stay bit for
        bit what the plain forward gives (PINE's prefix). None: every row from these positions.
    """

    q: jax.Array
    kv: jax.Array
    block: jax.Array
    shift: jax.Array
    vanilla_rows: jax.Array | None = None

    @property
    def n_blocks(self) -> int:
        return self.shift.shape[-1]

    def check(self, batch: int, heads: int, q_len: int, kv_len: int) -> None:
        """Raise ValueError naming the field whose shape does not fit the attention call."""
        want = {"q": (batch, heads, q_len), "kv": (batch, kv_len), "block": (batch, kv_len)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"KeyPositions.{name}: expected shape {shape}, got {got}")
        got = tuple(self.shift.shape)
        if got[:3] != (batch, heads, q_len) or len(got) != 4:
            raise ValueError(f"KeyPositions.shift: expected shape ({batch}, {heads}, {q_len}, "
                             f"n_blocks), got {got}")
        if self.vanilla_rows is not None and tuple(self.vanilla_rows.shape) != (batch, q_len):
            raise ValueError(f"KeyPositions.vanilla_rows: expected shape ({batch}, {q_len}), "
                             f"got {tuple(self.vanilla_rows.shape)}")

    def dense(self) -> jax.Array:
        """``[batch, heads, q_len, kv_len]``: the position of every key as seen by every query."""
        b, h, sq, _ = self.shift.shape
        idx = jnp.broadcast_to(self.block[:, None, None, :], (b, h, sq, self.block.shape[1]))
        return self.kv[:, None, None, :] + jnp.take_along_axis(self.shift, idx, axis=-1)


def _softmax_out(logits, mask: Mask | None, v, prob_transform, b, kvh, g, sq, skv, d, dtype):
    """Masked softmax of ``logits [b, kvh, g, sq, skv]`` (float32) and the weighted values."""
    if mask is not None:
        m = mask.materialize(b, sq, skv)
        if m is not None:
            m = m.reshape(b, -1, 1, sq, skv) if m.shape[1] == 1 else m.reshape(b, kvh, g, sq, skv)
            logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    pattern = probs.reshape(b, kvh * g, sq, skv)
    if prob_transform is not None:
        pattern = prob_transform(pattern)
        probs = pattern.reshape(b, kvh, g, sq, skv)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, sq, kvh * g, d).astype(dtype), pattern


def _reference_logits(q, k, pos: KeyPositions, rope: RoPE) -> jax.Array:
    """``[b, kvh, g, sq, skv]`` float32 logits (unscaled) with every key rotated per query."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    qr = rope.rotate_at(jnp.swapaxes(q, 1, 2), pos.q)  # [b, h, sq, d]
    krep = jnp.repeat(jnp.swapaxes(k, 1, 2), g, axis=1)  # [b, h, skv, d]
    kr = rope.rotate_at(krep[:, :, None], pos.dense())  # [b, h, sq, skv, d]
    logits = jnp.einsum("bhqd,bhqsd->bhqs", qr, kr, preferred_element_type=jnp.float32)
    return logits.reshape(b, kvh, g, sq, skv)


def _blocked_logits(q, k, pos: KeyPositions, rope: RoPE, chunk: int) -> jax.Array:
    """``[b, kvh, g, sq, skv]`` float32 logits (unscaled): each query rotated once per block,
    each key once, one contraction over ``(block, head_dim)``, queries in chunks."""
    b, sq, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    nb = pos.n_blocks
    kr = rope.rotate_at(k, pos.kv[:, :, None])  # [b, skv, kvh, d] at the base positions
    onehot = (pos.block[..., None] == jnp.arange(nb)).astype(kr.dtype)  # [b, skv, nb]
    kb = kr[:, :, :, None, :] * onehot[:, :, None, :, None]  # [b, skv, kvh, nb, d]
    qt = jnp.swapaxes(q, 1, 2)  # [b, h, sq, d]
    rows = []
    for start in range(0, sq, chunk):
        stop = min(start + chunk, sq)
        qpos = pos.q[:, :, start:stop, None] - pos.shift[:, :, start:stop]  # [b, h, c, nb]
        qb = rope.rotate_at(qt[:, :, start:stop, None], qpos)  # [b, h, c, nb, d]
        qb = qb.reshape(b, kvh, g, stop - start, nb, d)
        rows.append(jnp.einsum("bkgqnd,bsknd->bkgqs", qb, kb,
                               preferred_element_type=jnp.float32))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=3)


def rope_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: KeyPositions,
    rope: RoPE,
    *,
    mask: Mask | None = None,
    scale: float | jax.Array | None = None,
    softcap: float | None = None,
    implementation: str = "blocked",
    chunk: int = 256,
    return_pattern: bool = False,
    prob_transform: Callable[[jax.Array], jax.Array] | None = None,
) -> AttentionOutput:
    """Softmax attention with RoPE applied inside, at query-dependent key positions.

    Args:
      q: ``[batch, q_len, heads, head_dim]`` queries **before** RoPE.
      k, v: ``[batch, kv_len, kv_heads, head_dim]``; ``k`` **before** RoPE.
      positions: :class:`KeyPositions` (``vanilla_rows`` is the caller's business: ignored).
      rope: the model's :class:`~common.attention.rope.RoPE`.
      mask, scale, softcap, return_pattern, prob_transform: as in
        :func:`common.attention.core.dot_product_attention`.
      implementation: ``blocked`` (default) or ``reference`` (see the module docstring).
      chunk: query rows per chunk of ``blocked``.

    Returns:
      :class:`~common.attention.core.AttentionOutput`: ``out [batch, q_len, heads, head_dim]``
      and, if asked, ``pattern [batch, heads, q_len, kv_len]``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"rope_attention: unknown implementation {implementation!r}; choose "
                         f"one of {IMPLEMENTATIONS}")
    if chunk < 1:
        raise ValueError(f"rope_attention: chunk must be >= 1, got {chunk}")
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % kvh:
        raise ValueError(f"rope_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "[batch, len, heads, head_dim] with heads a multiple of kv_heads")
    positions.check(b, h, sq, skv)
    g = h // kvh
    if implementation == "reference":
        logits = _reference_logits(q, k, positions, rope)
    else:
        logits = _blocked_logits(q, k, positions, rope, chunk)
    s = head_scale(scale, h, d)
    logits = logits * s.reshape(1, kvh, g, 1, 1)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    out, pattern = _softmax_out(logits, mask, v, prob_transform, b, kvh, g, sq, skv, d, q.dtype)
    return AttentionOutput(out, pattern if return_pattern else None)

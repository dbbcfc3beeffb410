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
  and the logits held at once. With ``KeyPositions.block_size`` each block's keys are
  gathered into ``block_size`` slots so that each query variant meets only its own block
  (``_gathered_logits``, the logits gathered back to key order when the pattern is wanted);
  without a pattern the softmax runs over the slots themselves (``_slot_attention``: values
  gathered to the slots too, nothing of size heads x queries x keys gathered or transposed,
  cos/sin read from the tables ``rope_cos``/``rope_sin`` when given).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from common.attention.core import AttentionOutput, head_scale
from common.attention.masks import Mask
from common.attention.precision import accum_dtype, lowest
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
      block_size: static upper bound on the keys of any one block (the caller guarantees it):
        the ``blocked`` path then gathers each block's keys into ``[n_blocks, block_size]``
        and contracts each query variant with its own block only (the product of plain
        attention when ``n_blocks · block_size`` is about ``kv_len``). None: every query
        variant against every key (``n_blocks`` times the product).
      fixed_blocks: static: blocks ``[0, fixed_blocks)`` have shift 0 for every query and head
        (the caller guarantees it; PINE's keys outside the segments): the gathered path
        rotates each query once for all of them instead of once per block.
      rope_cos, rope_sin: optional ``[bound, rotary_dim // 2]`` tables of the model's RoPE
        (:func:`rope_tables`) covering every ``|position|`` and ``|query position - shift|``
        (the caller guarantees it; PINE: the number of key slots). The gathered path without
        a pattern then reads cos/sin from them instead of evaluating them per element. They
        must come in as arrays (an argument of the compiled program): tables computed inside
        it are fused back into per-element evaluation by XLA.
    """

    q: jax.Array
    kv: jax.Array
    block: jax.Array
    shift: jax.Array
    block_size: int | None = struct.field(pytree_node=False, default=None)
    fixed_blocks: int = struct.field(pytree_node=False, default=0)
    rope_cos: jax.Array | None = None
    rope_sin: jax.Array | None = None

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

    def dense(self) -> jax.Array:
        """``[batch, heads, q_len, kv_len]``: the position of every key as seen by every query."""
        b, h, sq, _ = self.shift.shape
        idx = jnp.broadcast_to(self.block[:, None, None, :], (b, h, sq, self.block.shape[1]))
        return self.kv[:, None, None, :] + jnp.take_along_axis(self.shift, idx, axis=-1)


def _softmax_out(logits, mask: Mask | None, v, prob_transform, b, kvh, g, sq, skv, d, dtype):
    """Masked softmax of ``logits [b, kvh, g, sq, skv]`` (the accumulation dtype) and the
    weighted values."""
    if mask is not None:
        m = mask.materialize(b, sq, skv)
        if m is not None:
            m = m.reshape(b, -1, 1, sq, skv) if m.shape[1] == 1 else m.reshape(b, kvh, g, sq, skv)
            logits = jnp.where(m, logits, lowest(logits.dtype))
    probs = jax.nn.softmax(logits, axis=-1)
    pattern = probs.reshape(b, kvh * g, sq, skv)
    if prob_transform is not None:
        pattern = prob_transform(pattern)
        probs = pattern.reshape(b, kvh, g, sq, skv)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v,
                     preferred_element_type=accum_dtype(v.dtype))
    return out.reshape(b, sq, kvh * g, d).astype(dtype), pattern


def _reference_logits(q, k, pos: KeyPositions, rope: RoPE) -> jax.Array:
    """``[b, kvh, g, sq, skv]`` logits (unscaled, accumulation dtype) with every key rotated
    per query."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    qr = rope.rotate_at(jnp.swapaxes(q, 1, 2), pos.q)  # [b, h, sq, d]
    krep = jnp.repeat(jnp.swapaxes(k, 1, 2), g, axis=1)  # [b, h, skv, d]
    kr = rope.rotate_at(krep[:, :, None], pos.dense())  # [b, h, sq, skv, d]
    logits = jnp.einsum("bhqd,bhqsd->bhqs", qr, kr, preferred_element_type=accum_dtype(q.dtype))
    return logits.reshape(b, kvh, g, sq, skv)


def _blocked_logits(q, k, pos: KeyPositions, rope: RoPE, chunk: int) -> jax.Array:
    """``[b, kvh, g, sq, skv]`` logits (unscaled, accumulation dtype): each query rotated once per block,
    each key once, one contraction over ``(block, head_dim)``, queries in chunks.

    Laid out as one batched matmul per KV head: rotated queries ``[b, kvh, group·chunk,
    nb·d]`` against keys ``[b, kvh, skv, nb·d]`` that are zero outside their block's slot.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    nb = pos.n_blocks
    kr = rope.rotate_at(k, pos.kv[:, :, None])  # [b, skv, kvh, d]
    onehot = (pos.block[..., None] == jnp.arange(nb)).astype(kr.dtype)  # [b, skv, nb]
    kb = kr[:, :, :, None, :] * onehot[:, :, None, :, None]  # [b, skv, kvh, nb, d]
    kb = kb.transpose(0, 2, 1, 3, 4).reshape(b, kvh, skv, nb * d)
    qt = q.reshape(b, sq, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [b, kvh, g, sq, d]
    qp = pos.q.reshape(b, kvh, g, sq)
    shift = pos.shift.reshape(b, kvh, g, sq, nb)
    rows = []
    for start in range(0, sq, chunk):
        stop = min(start + chunk, sq)
        c = stop - start
        qpos = qp[:, :, :, start:stop, None] - shift[:, :, :, start:stop]  # [b, kvh, g, c, nb]
        qb = rope.rotate_at(qt[:, :, :, start:stop, None], qpos)
        out = jnp.einsum("bkrx,bksx->bkrs", qb.reshape(b, kvh, g * c, nb * d), kb,
                         preferred_element_type=accum_dtype(q.dtype))
        rows.append(out.reshape(b, kvh, g, c, skv))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=3)


def _gathered_logits(q, k, pos: KeyPositions, rope: RoPE, chunk: int):
    """:func:`_blocked_logits` with each block's keys gathered into ``block_size`` slots:
    query variant ``β`` meets only the keys of block ``β``, then the logits go back to key
    order. Keys beyond a block's size are the caller's error (they would be dropped)."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    nb, size = pos.n_blocks, pos.block_size
    kr = rope.rotate_at(k, pos.kv[:, :, None])  # [b, skv, kvh, d]
    order = jnp.argsort(pos.block, axis=-1, stable=True)  # keys sorted by block
    counts = jnp.sum(pos.block[..., None] == jnp.arange(nb), axis=1)  # [b, nb]
    first = jnp.cumsum(counts, axis=-1) - counts  # [b, nb] where each block starts in `order`
    slot = first[:, :, None] + jnp.arange(size)  # [b, nb, size]
    filled = jnp.arange(size) < counts[:, :, None]
    idx = jnp.take_along_axis(order, jnp.minimum(slot, skv - 1).reshape(b, -1), axis=1)
    kg = jnp.take_along_axis(kr, idx[:, :, None, None], axis=1)  # [b, nb*size, kvh, d]
    kg = jnp.where(filled.reshape(b, -1)[:, :, None, None], kg, 0)
    kg = kg.reshape(b, nb, size, kvh, d).transpose(0, 3, 1, 2, 4)  # [b, kvh, nb, size, d]
    # where key j sits in the flattened (block, slot) axis
    rank = jnp.argsort(order, axis=-1)  # [b, skv] position of key j in `order`
    back = pos.block * size + rank - jnp.take_along_axis(first, pos.block, axis=1)
    qt = q.reshape(b, sq, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [b, kvh, g, sq, d]
    qp = pos.q.reshape(b, kvh, g, sq)
    nf = pos.fixed_blocks
    shift = pos.shift.reshape(b, kvh, g, sq, nb)[..., nf:]
    k_fixed = kg[:, :, :nf].reshape(b, kvh, nf * size, d)
    k_moved = kg[:, :, nf:]  # [b, kvh, nb - nf, size, d]
    rows = []
    for start in range(0, sq, chunk):
        stop = min(start + chunk, sq)
        c = stop - start
        parts = []
        if nf:
            q0 = rope.rotate_at(qt[:, :, :, start:stop], qp[:, :, :, start:stop])
            parts.append(jnp.einsum("bkgqd,bksd->bkgqs", q0, k_fixed,
                                    preferred_element_type=accum_dtype(q.dtype)))
        if nb > nf:
            qpos = qp[:, :, :, start:stop, None] - shift[:, :, :, start:stop]  # [.., c, nb-nf]
            qb = rope.rotate_at(qt[:, :, :, start:stop, None], qpos)
            qb = qb.transpose(0, 1, 4, 2, 3, 5).reshape(b, kvh, nb - nf, g * c, d)
            lg = jnp.einsum("bknrd,bknsd->bknrs", qb, k_moved,
                            preferred_element_type=accum_dtype(q.dtype))
            lg = lg.reshape(b, kvh, nb - nf, g, c, size).transpose(0, 1, 3, 4, 2, 5)
            parts.append(lg.reshape(b, kvh, g, c, (nb - nf) * size))
        lg = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        rows.append(jnp.take_along_axis(lg, back[:, None, None, None, :], axis=-1))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=3)


def rope_tables(rope: RoPE, bound: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """``(cos, sin)`` ``[bound, rope.dim // 2]`` of the angles ``p · inv_freq`` for ``p`` in
    ``[0, bound)`` (:attr:`KeyPositions.rope_cos` / ``rope_sin``), computed as
    :meth:`RoPE.rotate_at` computes them."""
    ang = jnp.arange(bound).astype(dtype)[:, None] * rope.inv_freq(dtype)
    return jnp.cos(ang), jnp.sin(ang)


def _slots(pos: KeyPositions, skv: int):
    """Each block's keys in ``block_size`` slots: ``(idx [b, nb, size], filled [b, nb, size])``:
    slot ``(β, s)`` holds key ``idx`` (keys in their order within the block) where ``filled``."""
    b = pos.block.shape[0]
    nb, size = pos.n_blocks, pos.block_size
    order = jnp.argsort(pos.block, axis=-1, stable=True)  # keys sorted by block
    counts = jnp.sum(pos.block[..., None] == jnp.arange(nb), axis=1)  # [b, nb]
    first = jnp.cumsum(counts, axis=-1) - counts
    slot = first[:, :, None] + jnp.arange(size)  # [b, nb, size]
    idx = jnp.take_along_axis(order, jnp.minimum(slot, skv - 1).reshape(b, -1), axis=1)
    return idx.reshape(b, nb, size), jnp.arange(size) < counts[:, :, None]


def _rotate_by_table(x, positions, cos_t, sin_t, rope: RoPE):
    """:meth:`RoPE.rotate_at` with ``cos``/``sin`` read from tables ``[bound, dim // 2]`` at
    ``|positions|`` (``sin`` negated for negative ones) instead of evaluated per element: the
    same angles ``p · inv_freq``, one evaluation per distinct position."""
    a = jnp.abs(positions)
    sign = jnp.where(positions < 0, -1, 1).astype(sin_t.dtype)[..., None]
    cos = jnp.take(cos_t, a, axis=0, mode="clip")
    sin = jnp.take(sin_t, a, axis=0, mode="clip") * sign
    return rope.rotate_by(x, cos, sin)


def _slot_attention(q, k, v, pos: KeyPositions, rope: RoPE, mask: Mask | None, scale,
                    softcap, chunk: int) -> jax.Array:
    """The gathered path without the pattern: ``out [b, sq, h, d]``.

    Laid out so that nothing of size ``heads x queries x keys`` is gathered or transposed:
    keys and values are gathered to ``[b, kvh, nb, size, d]`` slots; each chunk's queries are
    rotated once per block straight into ``[b, kvh, nb, g·c, d]`` (cos/sin from a table over
    ``[0, position_bound)``); the logits come out of one batched product as ``[b, kvh, nb,
    g·c, size]``; the mask is gathered to the slots as ``[sq, nb·size]`` booleans; the softmax
    runs over ``(block, slot)``; the values are weighted per block and summed over blocks.
    The same attention as the key-order paths up to the order of the sums.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    nb, size = pos.n_blocks, pos.block_size
    acc = accum_dtype(q.dtype)
    idx, filled = _slots(pos, skv)  # [b, nb, size]
    flat = idx.reshape(b, -1)
    cos_t, sin_t = pos.rope_cos, pos.rope_sin

    def rotate(x, p):
        return (rope.rotate_at(x, p) if cos_t is None
                else _rotate_by_table(x, p, cos_t, sin_t, rope))

    kr = rotate(k, pos.kv[:, :, None])  # [b, skv, kvh, d]
    kg = jnp.take_along_axis(kr, flat[:, :, None, None], axis=1)  # [b, nb*size, kvh, d]
    vg = jnp.take_along_axis(v, flat[:, :, None, None], axis=1)
    fill = filled.reshape(b, -1)[:, :, None, None]
    kg = jnp.where(fill, kg, 0).reshape(b, nb, size, kvh, d).transpose(0, 3, 1, 2, 4)
    vg = jnp.where(fill, vg, 0).reshape(b, nb, size, kvh, d).transpose(0, 3, 1, 2, 4)
    visible = jnp.broadcast_to(filled.reshape(b, 1, 1, nb * size), (b, 1, sq, nb * size))
    m = None if mask is None else mask.materialize(b, sq, skv)
    if m is not None:  # [b, heads|1, sq, skv] -> its columns in slot order
        cols = jnp.broadcast_to(flat[:, None, None, :], m.shape[:3] + (nb * size,))
        visible = jnp.take_along_axis(m, cols, axis=-1) & visible
    mh = visible.shape[1]
    # [b, heads|1, sq, nb, size] -> [b, kvh|1, nb, g|1, sq, size]
    visible = visible.reshape(b, mh, sq, nb, size).transpose(0, 1, 3, 2, 4)
    visible = (visible.reshape(b, kvh, g, nb, sq, size).transpose(0, 1, 3, 2, 4, 5) if mh > 1
               else visible[:, :, :, None])
    qt = q.reshape(b, sq, kvh, g, d).transpose(0, 2, 3, 1, 4)[:, :, None]  # [b, kvh, 1, g, sq, d]
    qpos = (pos.q.reshape(b, kvh, g, sq)[..., None]
            - pos.shift.reshape(b, kvh, g, sq, nb)).transpose(0, 1, 4, 2, 3)  # [b,kvh,nb,g,sq]
    sc = scale.reshape(1, kvh, 1, g, 1, 1).astype(acc)
    outs = []
    for start in range(0, sq, chunk):
        stop = min(start + chunk, sq)
        c = stop - start
        qb = rotate(qt[:, :, :, :, start:stop], qpos[..., start:stop])  # [b, kvh, nb, g, c, d]
        lg = jnp.einsum("bknrd,bknsd->bknrs", qb.reshape(b, kvh, nb, g * c, d), kg,
                        preferred_element_type=acc).reshape(b, kvh, nb, g, c, size) * sc
        if softcap is not None:
            lg = softcap * jnp.tanh(lg / softcap)
        lg = jnp.where(visible[..., start:stop, :], lg, lowest(acc))
        # the row max in two steps (over the slots, then the blocks): one reduction over the
        # non-adjacent axes (2, 5) ran 1.5x slower on XLA:CPU
        top = jnp.max(jnp.max(lg, axis=5, keepdims=True), axis=2, keepdims=True)
        e = jnp.exp(lg - top)  # [b, kvh, nb, g, c, size]
        # weight the values unnormalised and divide the [.., g·c, d] result by the row sums
        o = jnp.einsum("bknrs,bknsd->bkrd", e.reshape(b, kvh, nb, g * c, size).astype(v.dtype),
                       vg, preferred_element_type=acc)  # [b, kvh, g·c, d]
        o = o.reshape(b, kvh, g, c, d) / jnp.sum(e, axis=(2, 5))[..., None]
        outs.append(o)
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, sq, h, d).astype(q.dtype)


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
      positions: :class:`KeyPositions`.
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
    s = head_scale(scale, h, d, accum_dtype(q.dtype))
    if (implementation == "blocked" and positions.block_size is not None
            and prob_transform is None and not return_pattern):
        # no pattern wanted: the softmax runs over the slots (no logits back to key order)
        return AttentionOutput(_slot_attention(q, k, v, positions, rope, mask, s, softcap,
                                               chunk), None)
    if implementation == "reference":
        logits = _reference_logits(q, k, positions, rope)
    elif positions.block_size is not None:
        logits = _gathered_logits(q, k, positions, rope, chunk)
    else:
        logits = _blocked_logits(q, k, positions, rope, chunk)
    logits = logits * s.reshape(1, kvh, g, 1, 1)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    out, pattern = _softmax_out(logits, mask, v, prob_transform, b, kvh, g, sq, skv, d, q.dtype)
    return AttentionOutput(out, pattern if return_pattern else None)

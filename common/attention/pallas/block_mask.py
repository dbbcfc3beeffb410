"""The block-sparse mask description the flash kernels read.

A :class:`~common.attention.masks.Mask` is turned into

* per-token operands (``MaskOperands``): order positions for the causal test, segment ids
  (padding and packed sequences, with padded keys given a segment no query has), PINE document
  ids, and an optional dense ``int8`` array; the kernels evaluate the mask element-wise from
  them only inside *partial* blocks;
* a block-state array ``[batch, heads|1, num_q_blocks, num_kv_blocks]`` with
  ``EMPTY`` (fully masked: skipped, and its K/V tile is not even fetched), ``PARTIAL``
  (mask applied element-wise) and ``FULL`` (no mask work), computed from per-block min/max
  summaries in O(batch · blocks) without materialising the ``[q_len, kv_len]`` pattern
  (except for ``Mask.dense``, which already is one).

The PINE family (:class:`~common.attention.masks.PineMask`) becomes per-token document ids
``q_doc, kv_doc``; the kernels relax the causal test between different segments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.attention.masks import Mask, PineMask

EMPTY, PARTIAL, FULL = 0, 1, 2


class MaskOperands(NamedTuple):
    """Per-token mask operands, padded to whole blocks (None where a feature is off).

    ``q_pos, q_seg, q_doc`` are ``[batch, q_pad]`` int32; ``kv_pos, kv_seg, kv_doc``
    ``[batch, kv_pad]``; ``dense`` ``[batch|1, heads|1, q_pad, kv_pad]`` int8.
    """

    q_pos: jax.Array | None
    kv_pos: jax.Array | None
    q_seg: jax.Array | None
    kv_seg: jax.Array | None
    q_doc: jax.Array | None
    kv_doc: jax.Array | None
    dense: jax.Array | None

    @property
    def causal(self) -> bool:
        return self.q_pos is not None

    @property
    def segments(self) -> bool:
        return self.q_seg is not None

    @property
    def pine(self) -> bool:
        return self.q_doc is not None


def _pad(x: jax.Array, length: int, value=None, axis: int = 1) -> jax.Array:
    """Pad ``axis`` to ``length`` with ``value``, or by repeating the last entry (None).

    Repeating keeps the per-block min/max summaries of the last block tight.
    """
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    if value is None:
        return jnp.pad(x, widths, mode="edge")
    return jnp.pad(x, widths, constant_values=value)


def mask_operands(
    mask: Mask | None, batch: int, q_len: int, kv_len: int, q_pad: int, kv_pad: int
) -> MaskOperands:
    """Canonical operands for ``mask`` on sequences padded to ``q_pad`` / ``kv_pad``."""
    i32 = jnp.int32
    causal = mask is not None and mask.causal
    doc = mask.doc_ids if isinstance(mask, PineMask) else None
    q_pos = kv_pos = q_seg = kv_seg = q_doc = kv_doc = dense = None
    if causal:
        qp, kp = mask.default_positions(batch, q_len, kv_len)
        q_pos = _pad(jnp.broadcast_to(qp, (batch, q_len)).astype(i32), q_pad)
        kv_pos = _pad(jnp.broadcast_to(kp, (batch, kv_len)).astype(i32), kv_pad)
    if doc is not None:
        mask.check(q_len, kv_len)
        d = jnp.broadcast_to(doc, (batch, q_len)).astype(i32)
        q_doc, kv_doc = _pad(d, q_pad), _pad(d, kv_pad)
    has_seg = mask is not None and (
        mask.q_segment_ids is not None or mask.kv_segment_ids is not None
    )
    has_valid = mask is not None and mask.kv_valid is not None
    if has_seg or has_valid or kv_pad != kv_len:
        if has_seg:
            if mask.q_segment_ids is None or mask.kv_segment_ids is None:
                raise ValueError("Mask: q_segment_ids and kv_segment_ids must be given together")
            qs = jnp.broadcast_to(mask.q_segment_ids, (batch, q_len)).astype(i32)
            ks = jnp.broadcast_to(mask.kv_segment_ids, (batch, kv_len)).astype(i32)
        else:
            qs = jnp.zeros((batch, q_len), i32)
            ks = jnp.zeros((batch, kv_len), i32)
        # Keys that no query may see (padding, unfilled cache, block padding) get a segment id
        # below every real one.
        none = jnp.minimum(qs.min(), ks.min()) - 1
        if has_valid:
            valid = jnp.broadcast_to(mask.kv_valid, (batch, kv_len)).astype(bool)
            ks = jnp.where(valid, ks, none)
        q_seg = _pad(qs, q_pad)
        kv_seg = _pad(ks, kv_pad, none)
    if mask is not None and mask.dense is not None:
        dn = mask.dense
        if dn.ndim != 4 or dn.shape[2:] != (q_len, kv_len):
            raise ValueError(
                f"Mask.dense must be [batch|1, heads|1, {q_len}, {kv_len}], got {dn.shape}"
            )
        dense = _pad(_pad(dn.astype(jnp.int8), q_pad, axis=2), kv_pad, 0, axis=3)
    return MaskOperands(q_pos, kv_pos, q_seg, kv_seg, q_doc, kv_doc, dense)


def _block_minmax(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """``x [batch, n * block]`` -> per-block ``(min, max)`` ``[batch, n]``."""
    xb = x.reshape(x.shape[0], -1, block)
    return xb.min(-1), xb.max(-1)


def block_states(ops: MaskOperands, block_q: int, block_kv: int) -> jax.Array:
    """``[batch, heads|1, num_q_blocks, num_kv_blocks]`` int32 of ``EMPTY/PARTIAL/FULL``."""
    empty = None
    full = None

    def add(e, f):
        nonlocal empty, full
        empty = e if empty is None else (empty | e)
        full = f if full is None else (full & f)

    if ops.causal:
        qmin, qmax = _block_minmax(ops.q_pos, block_q)
        kmin, kmax = _block_minmax(ops.kv_pos, block_kv)
        c_empty = kmin[:, None, :] > qmax[:, :, None]
        c_full = kmax[:, None, :] <= qmin[:, :, None]
        if ops.pine:
            dqmin, dqmax = _block_minmax(ops.q_doc, block_q)
            dkmin, dkmax = _block_minmax(ops.kv_doc, block_kv)
            dqmin, dqmax = dqmin[:, :, None], dqmax[:, :, None]
            dkmin, dkmax = dkmin[:, None, :], dkmax[:, None, :]
            x_empty = (dqmax <= 0) | (dkmax <= 0) | (
                (dqmin == dqmax) & (dkmin == dkmax) & (dqmin == dkmin)
            )
            x_full = (dqmin > 0) & (dkmin > 0) & ((dqmax < dkmin) | (dkmax < dqmin))
            c_empty, c_full = c_empty & x_empty, c_full | x_full
        add(c_empty, c_full)
    if ops.segments:
        qmin, qmax = _block_minmax(ops.q_seg, block_q)
        kmin, kmax = _block_minmax(ops.kv_seg, block_kv)
        qmin, qmax = qmin[:, :, None], qmax[:, :, None]
        kmin, kmax = kmin[:, None, :], kmax[:, None, :]
        add((qmax < kmin) | (kmax < qmin), (qmin == qmax) & (kmin == kmax) & (qmin == kmin))
    st = None
    if empty is not None:
        st = jnp.where(empty, EMPTY, jnp.where(full, FULL, PARTIAL))[:, None]
    if ops.dense is not None:
        d = ops.dense
        bm, hm, sq, skv = d.shape
        db = d.reshape(bm, hm, sq // block_q, block_q, skv // block_kv, block_kv) != 0
        d_any, d_all = db.any(axis=(3, 5)), db.all(axis=(3, 5))
        dst = jnp.where(d_any, jnp.where(d_all, FULL, PARTIAL), EMPTY)
        st = dst if st is None else jnp.minimum(st, dst)  # EMPTY < PARTIAL < FULL
    return None if st is None else st.astype(jnp.int32)


def fetch_indices(states: jax.Array) -> jax.Array:
    """Which inner-axis block to fetch at each step of ``states [..., n_outer, n_inner]``.

    A skipped (``EMPTY``) step re-uses the block of the previous computed step (or of the first
    computed one), so the pipeline issues no copy for it.
    """
    n = states.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    live = states != EMPTY
    prev = jax.lax.cummax(jnp.where(live, idx, -1), axis=states.ndim - 1)
    first = jnp.argmax(live, axis=-1).astype(jnp.int32)[..., None]
    return jnp.where(prev >= 0, prev, first).astype(jnp.int32)

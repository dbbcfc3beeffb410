"""Attention masks as data.

A :class:`Mask` describes which keys each query may attend to, without materialising the
``[batch, heads, q_len, kv_len]`` boolean array until a backend needs it. Backends that can
exploit structure (``xla``'s ``is_causal``, the Pallas kernels' block skipping) read the fields;
the ``reference`` backend calls :meth:`Mask.materialize`.

All constraints are ANDed:

* ``causal``: key ``j`` is visible to query ``i`` iff ``kv_positions[j] <= q_positions[i]``
  (positions default to ``arange``; queries are right-aligned to the keys, as with a KV cache);
* segments: visible iff ``q_segment_ids[i] == kv_segment_ids[j]`` (packed sequences);
* padding: visible iff ``kv_valid[j]``;
* ``dense``: an arbitrary boolean array ``[batch|1, heads|1, q_len, kv_len]``.

:class:`PineMask` adds the PINE family (Wang et al., 2024, §3 of ``papers/pine.md``):
``doc_ids [batch, len]`` with ``0`` for tokens outside the permutable segments (prefix, suffix,
generated) and ``1..k`` for segment ``i``. Query ``i`` sees key ``j`` iff ``pos_j <= pos_i``
(causal) **or** both are segment tokens of different segments (bidirectional between segments,
causal within). Other constraints (padding, packing) are ANDed as usual. The Pallas kernels
skip its empty blocks (:mod:`common.attention.pallas.block_mask`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Mask:
    """Which keys each query attends to. ``True`` means *attend*.

    Attributes:
      causal: static flag; causal in ``q_positions`` / ``kv_positions`` order.
      q_positions: ``[batch, q_len]`` int order positions of the queries, or None.
      kv_positions: ``[batch, kv_len]`` int order positions of the keys, or None.
      q_segment_ids: ``[batch, q_len]`` int, or None.
      kv_segment_ids: ``[batch, kv_len]`` int, or None.
      kv_valid: ``[batch, kv_len]`` bool (padding / filled cache slots), or None.
      dense: ``[batch|1, heads|1, q_len, kv_len]`` bool, or None.
    """

    causal: bool = struct.field(pytree_node=False, default=False)
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    kv_valid: jax.Array | None = None
    dense: jax.Array | None = None

    @property
    def is_plain_causal(self) -> bool:
        """True when the mask is exactly the square lower-triangular causal mask."""
        return (
            self.causal
            and self.q_positions is None
            and self.kv_positions is None
            and self.q_segment_ids is None
            and self.kv_segment_ids is None
            and self.kv_valid is None
            and self.dense is None
        )

    @property
    def is_empty(self) -> bool:
        """True when nothing is masked."""
        return not self.causal and all(
            getattr(self, f) is None
            for f in ("q_segment_ids", "kv_segment_ids", "kv_valid", "dense")
        )

    def default_positions(self, batch: int, q_len: int, kv_len: int) -> tuple[jax.Array, jax.Array]:
        """``(q_positions [b, q_len], kv_positions [b, kv_len])`` with right-aligned defaults."""
        qp = self.q_positions
        kp = self.kv_positions
        if qp is None:
            qp = jnp.broadcast_to(jnp.arange(q_len) + (kv_len - q_len), (batch, q_len))
        if kp is None:
            kp = jnp.broadcast_to(jnp.arange(kv_len), (batch, kv_len))
        return qp, kp

    def materialize(self, batch: int, q_len: int, kv_len: int) -> jax.Array | None:
        """Boolean ``[batch, heads|1, q_len, kv_len]`` array, or None when nothing is masked."""
        out = None

        def _and(a, b):
            return b if a is None else jnp.logical_and(a, b)

        if self.causal:
            qp, kp = self.default_positions(batch, q_len, kv_len)
            out = _and(out, (kp[:, None, None, :] <= qp[:, None, :, None]))
        if self.q_segment_ids is not None or self.kv_segment_ids is not None:
            if self.q_segment_ids is None or self.kv_segment_ids is None:
                raise ValueError("Mask: q_segment_ids and kv_segment_ids must be given together")
            seg = self.q_segment_ids[:, None, :, None] == self.kv_segment_ids[:, None, None, :]
            out = _and(out, seg)
        if self.kv_valid is not None:
            out = _and(out, self.kv_valid[:, None, None, :].astype(bool))
        if self.dense is not None:
            if self.dense.ndim != 4:
                raise ValueError(
                    f"Mask.dense must be [batch|1, heads|1, q_len, kv_len], got {self.dense.shape}"
                )
            out = _and(out, self.dense.astype(bool))
        if out is not None:
            out = jnp.broadcast_to(out, (batch,) + out.shape[1:2] + (q_len, kv_len))
        return out


@struct.dataclass
class PineMask(Mask):
    """A :class:`Mask` with PINE's inter-segment bidirectional attention.

    Attributes:
      doc_ids: ``[batch, len]`` int, ``0`` outside the segments, ``1..k`` inside segment ``i``
        (queries and keys share the ids; self-attention, ``q_len == kv_len``). Requires
        ``causal=True``: the ids relax the causal constraint between different segments.

    ``materialize`` gives the boolean pattern, so the ``reference`` backend serves it too.
    """

    doc_ids: jax.Array | None = None

    @property
    def is_plain_causal(self) -> bool:
        return self.doc_ids is None and super().is_plain_causal

    @property
    def is_empty(self) -> bool:
        return self.doc_ids is None and super().is_empty

    def materialize(self, batch: int, q_len: int, kv_len: int) -> jax.Array | None:
        if self.doc_ids is None:
            return super().materialize(batch, q_len, kv_len)
        self.check(q_len, kv_len)
        rest = dataclasses.replace(self, causal=False, doc_ids=None).materialize(
            batch, q_len, kv_len
        )
        qp, kp = self.default_positions(batch, q_len, kv_len)
        doc = jnp.broadcast_to(self.doc_ids, (batch, q_len))
        dq, dk = doc[:, :, None], doc[:, None, :]
        cross = (dq > 0) & (dk > 0) & (dq != dk)  # segment tokens of different segments
        visible = (kp[:, None, :] <= qp[:, :, None]) | cross
        visible = visible[:, None]
        return visible if rest is None else jnp.logical_and(visible, rest)

    def check(self, q_len: int, kv_len: int) -> None:
        """Raise ValueError unless ``doc_ids`` fit a causal self-attention of ``q_len``."""
        if not self.causal:
            raise ValueError("PineMask: doc_ids relax the causal mask; set causal=True")
        if q_len != kv_len:
            raise ValueError(f"PineMask: needs self-attention (q_len {q_len} != kv_len {kv_len})")
        if self.doc_ids.ndim != 2 or self.doc_ids.shape[1] != q_len:
            raise ValueError(
                f"PineMask.doc_ids must be [batch, {q_len}], got {self.doc_ids.shape}")


def causal_mask() -> Mask:
    """The plain causal mask."""
    return Mask(causal=True)


def padding_mask(lengths: jax.Array, kv_len: int, causal: bool = True) -> Mask:
    """Mask for right-padded sequences of the given ``lengths [batch]``."""
    valid = jnp.arange(kv_len)[None, :] < lengths[:, None]
    return Mask(causal=causal, kv_valid=valid)

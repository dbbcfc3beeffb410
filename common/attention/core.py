"""``dot_product_attention``: the one attention entry point of headlab."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.attention import backends as _b
from common.attention.masks import Mask


class AttentionOutput(NamedTuple):
    """``out [batch, q_len, heads, head_dim]``; ``pattern [batch, heads, q_len, kv_len]`` or None."""

    out: jax.Array
    pattern: jax.Array | None


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raise ValueError unless ``q [b, sq, heads, d]`` and ``k, v [b, skv, kv_heads, d]`` fit."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be [batch, seq, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}"
        )
    b, _, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {k.shape} / v {v.shape} do not fit q {q.shape}")
    if h % k.shape[2]:
        raise ValueError(f"heads ({h}) must be a multiple of kv_heads ({k.shape[2]})")


def head_scale(scale: float | jax.Array | None, heads: int, head_dim: int) -> jax.Array:
    """Per-head softmax scale ``[heads]`` float32 (default ``1/sqrt(head_dim)``)."""
    if scale is None:
        scale = head_dim**-0.5
    s = jnp.asarray(scale, jnp.float32)
    if s.ndim == 0:
        return jnp.full((heads,), s)
    if s.shape != (heads,):
        raise ValueError(f"scale must be a scalar or [{heads}] (one per head), got {s.shape}")
    return s


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: Mask | None = None,
    scale: float | jax.Array | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    return_pattern: bool = False,
    prob_transform: Callable[[jax.Array], jax.Array] | None = None,
) -> AttentionOutput:
    """Multi-head (grouped-query) softmax attention.

    Args:
      q: ``[batch, q_len, heads, head_dim]``.
      k, v: ``[batch, kv_len, kv_heads, head_dim]`` with ``heads % kv_heads == 0``.
      mask: which keys each query sees (:class:`Mask`); None attends everywhere.
      scale: scalar or ``[heads]`` softmax scale; default ``1/sqrt(head_dim)``.
      softcap: optional logit soft-capping ``c·tanh(logits/c)``.
      backend: one of ``auto, reference, xla, cudnn, pallas``.
      return_pattern: also return the attention probabilities (forces ``reference``).
      prob_transform: ``pattern -> pattern`` applied before weighting values (forces
        ``reference``); used by interventions such as ACT calibration.

    Returns:
      :class:`AttentionOutput` with ``out [batch, q_len, heads, head_dim]``.
    """
    check_qkv(q, k, v)
    b, sq, h, d = q.shape
    if backend not in _b.BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {_b.BACKENDS}")
    s = head_scale(scale, h, d)
    if return_pattern or prob_transform is not None or backend == "reference":
        out, pattern = _b.reference_attention(q, k, v, mask, s, softcap, prob_transform)
        return AttentionOutput(out, pattern if return_pattern else None)
    order = _b.auto_order() if backend == "auto" else (backend,)
    reasons = []
    for name in order:
        try:
            return AttentionOutput(_b.run_backend(name, q, k, v, mask, s, softcap), None)
        except _b.BackendUnsupported as e:
            if backend != "auto":
                raise
            reasons.append(str(e))
    _b.LAST_FALLBACK["reason"] = "; ".join(reasons)
    out, _ = _b.reference_attention(q, k, v, mask, s, softcap, None)
    return AttentionOutput(out, None)

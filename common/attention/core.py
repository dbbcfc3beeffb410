"""``dot_product_attention``: the one attention entry point of headlab."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.attention.backends import attend
from common.attention.contract import check_qkv
from common.attention.masks import Mask
from common.attention.precision import accum_dtype


class AttentionOutput(NamedTuple):
    """``out [batch, q_len, heads, head_dim]``; ``pattern [batch, heads, q_len, kv_len]`` or None."""

    out: jax.Array
    pattern: jax.Array | None


def head_scale(scale: float | jax.Array | None, heads: int, head_dim: int,
               dtype=jnp.float32) -> jax.Array:
    """Per-head softmax scale ``[heads]`` in ``dtype`` (float32 by default; the
    accumulation dtype of the call, :func:`~common.attention.precision.accum_dtype`);
    default ``1/sqrt(head_dim)``."""
    if scale is None:
        scale = head_dim**-0.5
    s = jnp.asarray(scale, dtype)
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
      backend: one of ``auto, reference, cpu, xla, cudnn, pallas`` (see
        :mod:`common.attention.backends` for what each runs and what ``auto`` picks).
      return_pattern: also return the attention probabilities (forces ``reference``).
      prob_transform: ``pattern -> pattern`` applied before weighting values (forces
        ``reference``); used by interventions such as ACT calibration.

    Returns:
      :class:`AttentionOutput` with ``out [batch, q_len, heads, head_dim]``.
    """
    check_qkv(q, k, v)
    s = head_scale(scale, q.shape[2], q.shape[3], accum_dtype(q.dtype))
    return AttentionOutput(*attend(backend, q, k, v, mask, s, softcap, prob_transform,
                                   return_pattern))

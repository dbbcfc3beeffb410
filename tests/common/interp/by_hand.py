"""Attention recomputed by hand in float64 from a capture: the tests' independent reference."""

from __future__ import annotations

import numpy as np


def causal_pattern_and_z(cache, layer: int, n_heads: int, n_kv_heads: int,
                         d_head: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pattern [b, heads, q, k], z [b, q, heads, d_head])`` from captured ``rot_q``, ``rot_k``
    and ``v``: ``softmax(rot_q rot_kᵀ / sqrt(d_head) + causal)`` with each KV head repeated over
    its group of query heads, and ``z = pattern @ v``."""
    g = n_heads // n_kv_heads
    q = np.asarray(cache["rot_q", layer], np.float64)
    k = np.repeat(np.asarray(cache["rot_k", layer], np.float64), g, axis=2)
    v = np.repeat(np.asarray(cache["v", layer], np.float64), g, axis=2)
    s = q.shape[1]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d_head)
    logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p, np.einsum("bhqk,bkhd->bqhd", p, v)

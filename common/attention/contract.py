"""What every attention backend shares: the q/k/v shape contract and the "cannot serve" error.

The bottom of ``common.attention``: the dispatcher (:mod:`.backends`, :mod:`.core`) and the
Pallas kernels (:mod:`.pallas`) both import it, and it imports neither.
"""

from __future__ import annotations

import jax


class BackendUnsupported(Exception):
    """Raised by a backend that cannot serve this call; ``auto`` then tries the next one."""


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

"""Independent f32 reference and fast-compiling helpers for the Pallas kernel tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Interpret-mode kernels are large XLA programs on CPU; skipping LLVM's expensive passes halves
# their compile time and does not change float semantics.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` with :data:`FAST_COMPILE`, then called."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def brute_force_mask(
    batch: int,
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    q_pos=None,
    kv_pos=None,
    q_seg=None,
    kv_seg=None,
    kv_valid=None,
    doc=None,
    dense=None,
) -> np.ndarray:
    """``[batch, heads|1, q_len, kv_len]`` bool, by explicit loops (numpy)."""
    heads = 1 if dense is None else dense.shape[1]
    out = np.ones((batch, heads, q_len, kv_len), bool)
    q_pos = np.broadcast_to(np.arange(q_len) + kv_len - q_len, (batch, q_len)) if q_pos is None \
        else np.asarray(q_pos)
    kv_pos = np.broadcast_to(np.arange(kv_len), (batch, kv_len)) if kv_pos is None \
        else np.asarray(kv_pos)
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                for j in range(kv_len):
                    ok = True
                    if causal:
                        c = kv_pos[b, j] <= q_pos[b, i]
                        if doc is not None:
                            di, dj = doc[b][i], doc[b][j]
                            c = c or (di > 0 and dj > 0 and di != dj)
                        ok &= bool(c)
                    if q_seg is not None:
                        ok &= bool(q_seg[b][i] == kv_seg[b][j])
                    if kv_valid is not None:
                        ok &= bool(kv_valid[b][j])
                    if dense is not None:
                        ok &= bool(dense[min(b, dense.shape[0] - 1), h, i, j])
                    out[b, h, i, j] = ok
    return out


def reference(q, k, v, allowed, scale, softcap=None):
    """f32 einsum attention: ``(out [b, sq, h, d], lse [b, h, sq])``.

    K/V are repeated to the query heads here (the kernel never does). Fully masked rows give
    ``out = 0`` and ``lse = -inf``.
    """
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, g, axis=2)
    v = jnp.repeat(v, g, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest")
    logits = logits * jnp.asarray(scale, jnp.float32)[None, :, None, None]
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    allowed = jnp.asarray(allowed)
    m = jax.lax.stop_gradient(jnp.where(allowed, logits, -1e30).max(-1, keepdims=True))
    # exp of a finite argument in both branches keeps the masked branch's gradient finite
    e = jnp.where(allowed, jnp.exp(jnp.where(allowed, logits - m, 0.0)), 0.0)
    total = e.sum(-1)
    ok = total > 0
    lse = jnp.where(ok, m[..., 0] + jnp.log(jnp.where(ok, total, 1.0)), -jnp.inf)
    p = e / jnp.where(ok, total, 1.0)[..., None]
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v, precision="highest")
    return out, lse

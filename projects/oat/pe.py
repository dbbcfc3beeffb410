"""OAT's learned distance-based positional encoding (spec §3).

A 1-D table ``W [R, width]`` is learned offline so that the cosine similarity of two rows
follows a Gaussian of their distance, ``cos(W_i, W_j) ≈ g_ij = exp(−(i − j)² / (2σ²))`` with
σ = 2; the loss is ``Σ_{i≠j} (cos_ij − g_ij)² / (R(R−1)) + Var_i(‖W_i‖)`` (the variance term
keeps the norms equal), Adam (lr 0.01), 10,000 iterations, ``W ~ N(0, 1)`` at init. The object
PE is ``concat(W[row], W[col], W[flag])`` cut to its first ``d_pe`` dims (the official 256 of
3·86 = 258: the last two dims of the flag part are dropped).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def gaussian_target(rows: int, sigma: float) -> np.ndarray:
    """``g [R, R]`` = exp(−(i − j)² / (2σ²))."""
    i = np.arange(rows, dtype=np.float64)
    return np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))


def cosine_matrix(w: jax.Array) -> jax.Array:
    """``[R, R]`` cosine similarity of the rows of ``w [R, width]``."""
    u = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    return u @ u.T


def pe_loss(w: jax.Array, target: jax.Array) -> jax.Array:
    """The official objective: off-diagonal mean squared cosine error + variance of row norms."""
    r = w.shape[0]
    off = 1.0 - jnp.eye(r)
    err = jnp.sum(((cosine_matrix(w) - target) * off) ** 2) / (r * (r - 1))
    return err + jnp.var(jnp.linalg.norm(w, axis=-1))


def learn_table(rows: int, width: int, *, sigma: float = 2.0, steps: int = 10_000,
                lr: float = 0.01, seed: int = 0) -> np.ndarray:
    """Learn ``W [rows, width]`` (float32) by Adam on :func:`pe_loss` (one compiled scan)."""
    if rows < 2 or width < 1:
        raise ValueError(f"learn_table: need rows >= 2 and width >= 1, got {rows}, {width}")
    target = jnp.asarray(gaussian_target(rows, sigma), jnp.float32)
    tx = optax.adam(lr)
    w0 = jax.random.normal(jax.random.key(seed), (rows, width), jnp.float32)

    @jax.jit
    def fit(w):
        def body(carry, _):
            w, opt = carry
            g = jax.grad(pe_loss)(w, target)
            upd, opt = tx.update(g, opt, w)
            return (optax.apply_updates(w, upd), opt), None

        (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), None, length=steps)
        return w

    return np.asarray(fit(w0))


def table_error(w: np.ndarray, sigma: float = 2.0) -> dict[str, float]:
    """How well ``w``'s cosine similarity matches the Gaussian: RMS and max abs error over the
    off-diagonal pairs, and the relative spread (std / mean) of the row norms."""
    w = np.asarray(w, np.float64)
    u = w / np.linalg.norm(w, axis=-1, keepdims=True)
    c = u @ u.T
    g = gaussian_target(len(w), sigma)
    off = ~np.eye(len(w), dtype=bool)
    err = (c - g)[off]
    norms = np.linalg.norm(w, axis=-1)
    return {"rms": float(np.sqrt(np.mean(err**2))), "max_abs": float(np.abs(err).max()),
            "norm_spread": float(norms.std() / norms.mean())}


def part_width(d_pe: int) -> int:
    """Width of each of the three parts (row, col, flag): ``ceil(d_pe / 3)`` (86 for 256)."""
    return math.ceil(d_pe / 3)


def object_pe(table: jax.Array, rows: jax.Array, cols: jax.Array, flags: jax.Array,
              d_pe: int) -> jax.Array:
    """``concat(W[row], W[col], W[flag])[..., :d_pe]`` for int index arrays broadcasting to one
    shape ``S``; returns ``[*S, d_pe]``."""
    rows, cols, flags = jnp.broadcast_arrays(rows, cols, flags)
    pe = jnp.concatenate([table[rows], table[cols], table[flags]], axis=-1)
    return pe[..., :d_pe]

"""Prompts of in-context linear regression (He et al. 2025, §2 of the spec).

A prompt holds ``L`` context tokens ``z_l = [x_l; y_l]`` and one query ``z_q = [x_q; 0]``:

* covariates ``x ~ N(0, Σ)`` (``Σ = I_d`` by default), drawn as ``x = Σ^{1/2} g``;
* one task vector per prompt ``β ~ N(0, I_d / d)`` (``E‖β‖² = 1``); with ``N`` tasks on
  feature subsets ``S_n`` (the superposition extension) task ``n`` reads ``β_{S_n}`` and
  ``β ~ N(0, I_d / |S_n|)`` so that each task keeps unit signal variance;
* labels ``y = βᵀx + ε``, ``ε ~ N(0, σ²)``; the query label ``y_q`` is noisy too, so every
  reported MSE includes the irreducible ``σ²``.

Everything is a pure jittable function of a PRNG key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Prompts(NamedTuple):
    """A batch of prompts.

    Attributes:
      x: ``[batch, L, d]`` context covariates.
      y: ``[batch, L, N]`` context labels (``N`` tasks; 1 for plain regression).
      x_q: ``[batch, d]`` query covariate.
      y_q: ``[batch, N]`` noisy query labels.
      beta: ``[batch, d]`` task vector.
    """

    x: jax.Array
    y: jax.Array
    x_q: jax.Array
    y_q: jax.Array
    beta: jax.Array

    @property
    def context(self) -> jax.Array:
        """Context tokens ``Z = [x; y]`` as ``[batch, L, d + N]``."""
        return jnp.concatenate([self.x, self.y], axis=-1)

    @property
    def query(self) -> jax.Array:
        """Query tokens ``[x_q; 0]`` as ``[batch, d + N]``."""
        return jnp.concatenate([self.x_q, jnp.zeros_like(self.y_q)], axis=-1)


def sample_prompts(
    key: jax.Array,
    batch: int,
    length: int,
    d: int,
    sigma2: float | jax.Array,
    cov_sqrt: jax.Array | None = None,
    task_masks: jax.Array | None = None,
) -> Prompts:
    """Draw ``batch`` fresh prompts of ``length`` context tokens.

    Args:
      key: PRNG key.
      batch, length, d: sizes (static).
      sigma2: label-noise variance ``σ²``.
      cov_sqrt: ``[d, d]`` symmetric square root of the covariate covariance, or None for ``I_d``.
      task_masks: ``[N, d]`` 0/1 feature subsets ``S_n``, or None for one task on all features.

    Returns:
      :class:`Prompts` with ``N = task_masks.shape[0]`` (or 1).

    Random bits come from threefry in its non-partitionable form, 1.7x faster on XLA:CPU
    (these prompts are never sharded inside one draw).
    """
    with jax.threefry_partitionable(False):
        return _sample(key, batch, length, d, sigma2, cov_sqrt, task_masks)


def _sample(key, batch, length, d, sigma2, cov_sqrt, task_masks) -> Prompts:
    kx, kq, kb, ke, keq = jax.random.split(key, 5)
    x = jax.random.normal(kx, (batch, length, d))
    x_q = jax.random.normal(kq, (batch, d))
    if cov_sqrt is not None:
        x = x @ cov_sqrt
        x_q = x_q @ cov_sqrt
    if task_masks is None:
        task_masks = jnp.ones((1, d))
    n_tasks = task_masks.shape[0]
    subset = jnp.sum(task_masks, axis=-1)  # [N] = |S_n|
    # All tasks share one β; each reads its subset. Scale so E‖β_{S_n}‖² = 1 per task.
    scale = 1.0 / jnp.sqrt(jnp.max(subset))
    beta = jax.random.normal(kb, (batch, d)) * scale
    w = beta[:, None, :] * task_masks[None]  # [batch, N, d]
    noise = jnp.sqrt(jnp.asarray(sigma2, jnp.float32))
    y = jnp.einsum("bld,bnd->bln", x, w) + noise * jax.random.normal(ke, (batch, length, n_tasks))
    y_q = jnp.einsum("bd,bnd->bn", x_q, w) + noise * jax.random.normal(keq, (batch, n_tasks))
    return Prompts(x, y, x_q, y_q, beta)


def toeplitz_covariance(d: int, rho: float) -> np.ndarray:
    """``Σ_ij = ρ^{|i-j|}`` (the official code's ``generate_covariance_matrix``)."""
    idx = np.arange(d)
    return rho ** np.abs(idx[:, None] - idx[None, :]).astype(np.float64)


def covariance_sqrt(cov: np.ndarray, field: str = "covariance") -> np.ndarray:
    """Symmetric square root of a PSD covariance; raises ``ValueError`` naming ``field`` if not PSD."""
    cov = np.asarray(cov, np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{field} must be a square [d, d] matrix, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"{field} has non-finite entries")
    if not np.allclose(cov, cov.T, atol=1e-8):
        raise ValueError(f"{field} must be symmetric (max |Σ - Σᵀ| = {np.abs(cov - cov.T).max():.3g})")
    evals, evecs = np.linalg.eigh(cov)
    if evals.min() < -1e-8 * max(1.0, evals.max()):
        raise ValueError(
            f"{field} is not positive semi-definite: smallest eigenvalue {evals.min():.4g}"
        )
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T

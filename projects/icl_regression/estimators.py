"""Closed-form in-context predictors (§7 of the spec), their Monte-Carlo and exact risks.

Predictors take one batch of single-task prompts ``x [b, L, d]``, ``y [b, L]``, ``x_q [b, d]``
and return ``ŷ_q [b]``. Risks are test MSE against the noisy ``y_q`` (they include ``σ²``), with
``x ~ N(0, I_d)`` and ``β ~ N(0, I_d/d)`` unless a covariance is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from projects.icl_regression import data

Predictor = Callable[..., jax.Array]  # (x, y, x_q, valid=None) -> ŷ [b]


# ---------------------------------------------------------------------------- predictors


def _valid(x: jax.Array, y: jax.Array, valid: jax.Array | None):
    """Zero padded tokens; returns ``(x, y, w [b, L] weights, n [b] lengths)``."""
    if valid is None:
        w = jnp.ones(x.shape[:2], x.dtype)
    else:
        w = valid.astype(x.dtype)
    return x * w[..., None], y * w, w, jnp.sum(w, axis=1)


def gd(x: jax.Array, y: jax.Array, x_q: jax.Array, eta: float,
       valid: jax.Array | None = None) -> jax.Array:
    """One GD step from 0 on the in-context least squares: ``(η/L) Σ_l y_l x_lᵀ x_q``.

    ``valid [b, L]`` (optional) marks real tokens of right-padded prompts (here and below).
    """
    x, y, _, n = _valid(x, y, valid)
    return eta * jnp.einsum("bl,bld,bd->b", y, x, x_q) / n


def debiased_gd(x: jax.Array, y: jax.Array, x_q: jax.Array, eta: float,
                precond: jax.Array | None = None, valid: jax.Array | None = None) -> jax.Array:
    """``(η/L) Σ_l y_l (x_l - x̄)ᵀ Ω x_q`` with ``x̄`` the context mean, ``Ω = precond or I``."""
    x, y, _, n = _valid(x, y, valid)
    xbar = jnp.sum(x, axis=1) / n[:, None]
    q = x_q if precond is None else x_q @ jnp.asarray(precond, x.dtype).T
    # Σ_l y_l (x_l - x̄) over real tokens (padded y are 0).
    s = jnp.einsum("bl,bld->bd", y, x) - jnp.sum(y, axis=1)[:, None] * xbar
    return eta * jnp.einsum("bd,bd->b", s, q) / n


def ridge(x: jax.Array, y: jax.Array, x_q: jax.Array, lam: float,
          valid: jax.Array | None = None) -> jax.Array:
    """Ridge ``β̂ = (XᵀX + λI)⁻¹ Xᵀy``; the Bayes posterior mean at ``λ = σ² d``."""
    x, y, _, _ = _valid(x, y, valid)
    d = x.shape[-1]
    gram = jnp.einsum("bld,ble->bde", x, x) + lam * jnp.eye(d, dtype=x.dtype)
    beta = jnp.linalg.solve(gram, jnp.einsum("bld,bl->bd", x, y)[..., None])[..., 0]
    return jnp.einsum("bd,bd->b", beta, x_q)


def kernel_regressors(x: jax.Array, y: jax.Array, x_q: jax.Array, omegas, mus,
                      valid: jax.Array | None = None) -> jax.Array:
    """Reduced softmax model ``Σ_h μ_h Σ_l y_l softmax_l(ω_h x_lᵀ x_q)`` (spec §6).

    One head ``(1/sqrt(d), μ)`` is the Nadaraya-Watson kernel (single-head TF); two heads
    ``(γ, -γ), (μ, -μ)`` are the idealised multi-head TF.
    """
    omegas = jnp.asarray(omegas, x.dtype)
    mus = jnp.asarray(mus, x.dtype)
    s = jnp.einsum("bld,bd->bl", x, x_q)
    logits = omegas[:, None, None] * s[None]
    if valid is not None:
        logits = jnp.where(valid[None], logits, -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)  # [H, b, L]
    return jnp.einsum("h,hbl,bl->b", mus, p, y)


# ---------------------------------------------------------------------------- parameters


def eta_star(d: int, length: int, sigma2: float) -> float:
    """Theorem 1's optimal debiased-GD step ``η* = (1 + (1+σ²) d / L)⁻¹``."""
    return 1.0 / (1.0 + (1.0 + sigma2) * d / length)


def gd_opt_eta(d: int, length: int, sigma2: float) -> float:
    """Step minimising the exact finite-L GD risk: ``1 / (1 + (d+1)/L + σ² d / L)``."""
    return 1.0 / (1.0 + (d + 1) / length + sigma2 * d / length)


def debiased_gd_opt_eta(d: int, length: int, sigma2: float) -> float:
    """Step minimising the exact finite-L debiased-GD risk (:func:`debiased_gd_risk`)."""
    return length / (length + d + sigma2 * d)


def nw_params(d: int, length: int, sigma2: float) -> tuple[float, float]:
    """Single-head optimum of Chen et al. 2024a: ``ω = 1/sqrt(d)``, ``μ = sqrt(d)/(1+(1+σ²)(d/L)e)``."""
    return 1.0 / math.sqrt(d), math.sqrt(d) / (1.0 + (1.0 + sigma2) * d / length * math.e)


# ---------------------------------------------------------------------------- exact risks


def gd_risk(eta: float, d: int, length: int, sigma2: float) -> float:
    """Exact finite-L risk of :func:`gd` (uses ``E[S²] = (1 + (d+1)/L) I``, ``S = XᵀX/L``).

    ``R(η) = 1 + σ² - 2η + η² (1 + (d+1)/L + σ² d/L)``.
    """
    return 1.0 + sigma2 - 2.0 * eta + eta**2 * (1.0 + (d + 1) / length + sigma2 * d / length)


def debiased_gd_risk(eta: float, d: int, length: int, sigma2: float) -> float:
    """Exact finite-L risk of :func:`debiased_gd` (isotropic, ``Ω = I``).

    With ``W = Σ_l (x_l - x̄)(x_l - x̄)ᵀ ~ Wishart(I_d, n = L-1)``: ``E W = n I``,
    ``E W² = n(n+d+1) I`` and ``E tr W = n d``, so
    ``R(η) = 1 + σ² - 2η n/L + η² n (n + d + 1 + σ² d) / L²``.
    """
    n = length - 1
    return 1.0 + sigma2 - 2.0 * eta * n / length + eta**2 * n * (n + d + 1 + sigma2 * d) / length**2


def bayes_risk(d: int, length: int, sigma2: float, seed: int = 0, n: int = 20_000) -> float:
    """Bayes risk ``σ² + σ² E tr((XᵀX + σ² d I)⁻¹)`` (posterior variance; MC over ``X`` only)."""
    if sigma2 <= 0:
        raise ValueError("bayes_risk needs sigma2 > 0")
    x = np.random.default_rng(seed).standard_normal((n, length, d))
    evals = np.linalg.eigvalsh(np.einsum("bld,ble->bde", x, x))
    return float(sigma2 + sigma2 * np.mean(np.sum(1.0 / (evals + sigma2 * d), axis=-1)))


def gd_risk_proportional(xi: float, sigma2: float) -> float:
    """Limit ``L → ∞``, ``d/L → ξ`` of the optimally tuned GD risk: ``σ² + ξ(1+σ²)/(ξ(1+σ²)+1)``."""
    return sigma2 + xi * (1 + sigma2) / (xi * (1 + sigma2) + 1)


def bayes_risk_proportional(xi: float, sigma2: float) -> float:
    """Limit of the Bayes (ridge) risk: ``½(σ² + (ξ-1)/ξ + sqrt(4σ² + (σ² + (1-ξ)/ξ)²))``."""
    return 0.5 * (sigma2 + (xi - 1) / xi + math.sqrt(4 * sigma2 + (sigma2 + (1 - xi) / xi) ** 2))


def theorem1_ratio_bound(xi: float, sigma2: float) -> float:
    """Theorem 1.3: risk(debiased GD, η*) / Bayes risk ≤ ``1 + σ⁻²[(1+ξσ²)(1+σ²+ξ⁻¹)]⁻¹``."""
    return 1.0 + 1.0 / (sigma2 * (1 + xi * sigma2) * (1 + sigma2 + 1 / xi))


# ---------------------------------------------------------------------------- Monte-Carlo


def mc_risks(predictors: dict[str, Predictor], key: jax.Array, n: int, length: int, d: int,
             sigma2: float, cov: np.ndarray | None = None,
             chunk: int = 4000) -> dict[str, tuple[float, float]]:
    """Monte-Carlo test MSE ``(mean, standard error)`` of each predictor on the same prompts.

    Args:
      predictors: name -> ``(x [b, L, d], y [b, L], x_q [b, d]) -> ŷ [b]`` (jittable).
      key: PRNG key; ``n`` prompts of ``length`` context tokens in chunks of ``chunk``.
      cov: covariate covariance (None: identity).
    """
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    cov_sqrt = None if cov is None else jnp.asarray(data.covariance_sqrt(cov), jnp.float32)
    names = list(predictors)

    @jax.jit
    def errs(keys):
        def one(k):
            pr = data.sample_prompts(k, chunk, length, d, sigma2, cov_sqrt)
            y, yq = pr.y[..., 0], pr.y_q[:, 0]
            return jnp.stack([(predictors[m](pr.x, y, pr.x_q) - yq) ** 2 for m in names])

        return jax.lax.map(one, keys)  # [chunks, M, chunk]

    e = np.asarray(errs(jax.random.split(key, n_chunks)), np.float64)
    e = np.moveaxis(e, 1, 0).reshape(len(names), -1)
    return {m: (float(e[i].mean()), float(e[i].std() / math.sqrt(e.shape[1])))
            for i, m in enumerate(names)}


def standard_predictors(d: int, length: int, sigma2: float, gamma: float, mu: float,
                        nw_length: int | None = None) -> dict[str, Predictor]:
    """The spec's estimator set at one prompt length.

    ``multihead`` is the idealised two-head TF ``(γ, -γ), (μ, -μ)``; ``single_head`` the NW
    kernel with its μ tuned for ``nw_length`` (default: this length); ``gd`` uses its exact
    optimal step; ``debiased_gd`` Theorem 1's ``η*``; ``bayes`` ridge with ``λ = σ² d``.
    """
    w1, m1 = nw_params(d, nw_length or length, sigma2)
    eta_gd = gd_opt_eta(d, length, sigma2)
    eta_dgd = eta_star(d, length, sigma2)
    return {
        "multihead": lambda x, y, q, v=None: kernel_regressors(x, y, q, [gamma, -gamma],
                                                               [mu, -mu], v),
        "single_head": lambda x, y, q, v=None: kernel_regressors(x, y, q, [w1], [m1], v),
        "gd": lambda x, y, q, v=None: gd(x, y, q, eta_gd, v),
        "debiased_gd": lambda x, y, q, v=None: debiased_gd(x, y, q, eta_dgd, valid=v),
        "bayes": lambda x, y, q, v=None: ridge(x, y, q, sigma2 * d, v),
    }

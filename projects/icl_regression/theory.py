"""The approximate population loss ``L̃`` and what follows from it (§8 of the spec).

In reduced parameters ``ω, μ ∈ R^H`` (the per-head KQ scale and OV last entry):

    L̃(ω, μ) = 1 + σ² - 2 μᵀω + μᵀ (ωωᵀ + (1+σ²) L⁻¹ exp(d ωωᵀ)) μ      (exp elementwise)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def approx_loss(omega: jax.Array, mu: jax.Array, d: int, length: int, sigma2: float) -> jax.Array:
    """``L̃(ω, μ)`` for ``ω, μ [..., H]`` (batched over leading axes)."""
    outer = omega[..., :, None] * omega[..., None, :]
    quad = outer + (1.0 + sigma2) / length * jnp.exp(d * outer)
    return (1.0 + sigma2 - 2.0 * jnp.sum(mu * omega, -1)
            + jnp.einsum("...i,...ij,...j->...", mu, quad, mu))


def mu_star(omega: np.ndarray, d: int, length: int, sigma2: float) -> np.ndarray:
    """Optimal OV for fixed KQ: ``μ*(ω) = (ωωᵀ + (1+σ²)L⁻¹ exp(dωωᵀ))⁻¹ ω``."""
    omega = np.asarray(omega, np.float64)
    outer = np.outer(omega, omega)
    return np.linalg.solve(outer + (1.0 + sigma2) / length * np.exp(d * outer), omega)


def mu_gamma(gamma, d: int, length: int, sigma2: float):
    """Group OV sum on the solution manifold: ``μ_γ = (γ/2) / (γ² + (1+σ²)L⁻¹ sinh(dγ²))``."""
    gamma = np.asarray(gamma, np.float64)
    return (gamma / 2.0) / (gamma**2 + (1.0 + sigma2) / length * np.sinh(d * gamma**2))


def manifold_loss(gamma, d: int, length: int, sigma2: float):
    """``L̃`` on the manifold ``S_γ`` with the optimal ``μ_γ``: ``1 + σ² - 2γμ_γ``."""
    return 1.0 + sigma2 - 2.0 * np.asarray(gamma) * mu_gamma(gamma, d, length, sigma2)


@functools.partial(jax.jit, static_argnames=("steps", "every", "d", "length"))
def gradient_flow(omega0: jax.Array, mu0: jax.Array, *, lr: float, steps: int, every: int,
                  d: int, length: int, sigma2: float):
    """Plain gradient descent on ``L̃/2`` (a discretised gradient flow, time = step · lr).

    ``L̃/2`` as in the official code (``loss_function``), so that times match its plots.

    Returns ``(time [T], omega [T, H], mu [T, H], loss [T])`` recorded every ``every`` steps
    (``T = steps // every + 1``, the first row is the initial point).
    """
    grad = jax.grad(lambda w, m: 0.5 * approx_loss(w, m, d, length, sigma2), argnums=(0, 1))

    def inner(carry, _):
        w, m = carry
        gw, gm = grad(w, m)
        return (w - lr * gw, m - lr * gm), None

    def outer(carry, _):
        carry, _ = jax.lax.scan(inner, carry, None, length=every)
        return carry, carry

    w0 = jnp.asarray(omega0, jnp.float32)
    m0 = jnp.asarray(mu0, jnp.float32)
    _, (ws, ms) = jax.lax.scan(outer, (w0, m0), None, length=steps // every)
    ws = jnp.concatenate([w0[None], ws])
    ms = jnp.concatenate([m0[None], ms])
    time = jnp.arange(ws.shape[0]) * every * lr
    return time, ws, ms, approx_loss(ws, ms, d, length, sigma2)


def reduced_model_risk(gamma: float, mu: float, d: int, length: int, sigma2: float,
                       key: jax.Array, n: int) -> float:
    """Monte-Carlo true risk of the two-head reduced model ``(γ,-γ), (μ,-μ)``."""
    from projects.icl_regression import estimators

    res = estimators.mc_risks(
        {"m": lambda x, y, q: estimators.kernel_regressors(x, y, q, [gamma, -gamma], [mu, -mu])},
        key, n, length, d, sigma2)
    return res["m"][0]


def softmax_norms(key: jax.Array, n: int, length: int, d: int, scale: float,
                  chunk: int = 500) -> np.ndarray:
    """``‖softmax_l(s · x_lᵀ x_q)‖₂`` over ``n`` draws (near ``1/sqrt(L)`` when nearly uniform).

    Drawn ``chunk`` prompts at a time (``L = 800, d = 100`` is 320 MB per 1000 draws).
    """
    chunk = min(chunk, n)

    def one(k):
        kx, kq = jax.random.split(k)
        x = jax.random.normal(kx, (chunk, length, d))
        q = jax.random.normal(kq, (chunk, d))
        p = jax.nn.softmax(scale * jnp.einsum("bld,bd->bl", x, q), axis=-1)
        return jnp.linalg.norm(p, axis=-1)

    keys = jax.random.split(key, -(-n // chunk))
    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(keys)).reshape(-1)[:n]


def gamma_for_step(eta: float, d: int, length: int, sigma2: float) -> float:
    """The ``γ`` with ``2γμ_γ = η`` on the manifold (bisection; needs ``η < η*``)."""
    lo, hi = 1e-6, 3.0
    f = lambda g: 2 * g * mu_gamma(g, d, length, sigma2) - eta
    if f(lo) < 0:
        raise ValueError(f"step {eta} is above eta* = 2γμ_γ at γ→0")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


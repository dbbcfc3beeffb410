"""The approximate loss L̃, μ*(ω), μ_γ and the gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.icl_regression import estimators as E
from projects.icl_regression import theory as T

D, L, S2 = 5, 40, 0.1


def test_mu_star_is_stationary():
    omega = jnp.array([0.3, -0.1, 0.05])
    mu = T.mu_star(np.asarray(omega), D, L, S2)
    g = jax.grad(lambda m: T.approx_loss(omega, m, D, L, S2))(jnp.asarray(mu, jnp.float32))
    assert float(jnp.abs(g).max()) < 1e-3


def test_mu_gamma_is_mu_star_on_the_manifold():
    for gamma in (0.05, 0.13, 0.3):
        ms = T.mu_star(np.array([gamma, -gamma]), D, L, S2)
        np.testing.assert_allclose(ms, [T.mu_gamma(gamma, D, L, S2), -T.mu_gamma(gamma, D, L, S2)],
                                   rtol=1e-9)
    assert T.mu_gamma(0.13, D, L, S2) == pytest.approx(3.38, abs=0.005)  # spec §8 check


def test_taylor_form():
    """L̃ = σ² + (1-⟨μ,ω⟩)² + (1+σ²)/L Σ_{k≥0} d^k/k! ⟨μ, ω^k⟩²."""
    rng = np.random.default_rng(0)
    w, m = 0.3 * rng.standard_normal(4), rng.standard_normal(4)
    series = sum(D**k / np.prod(np.arange(1, k + 1)) * (m @ w**k) ** 2 for k in range(40))
    want = S2 + (1 - m @ w) ** 2 + (1 + S2) / L * series
    assert float(T.approx_loss(jnp.asarray(w), jnp.asarray(m), D, L, S2)) == pytest.approx(
        want, rel=1e-5)


def test_manifold_minimum_is_debiased_gd():
    g = np.array([1e-4, 0.05, 0.13, 0.3])
    losses = T.manifold_loss(g, D, L, S2)
    assert np.all(np.diff(losses) > 0)  # minimum as γ → 0⁺
    assert losses[0] == pytest.approx(1 + S2 - E.eta_star(D, L, S2), abs=1e-6)
    assert 2 * 0.13 * T.mu_gamma(0.13, D, L, S2) == pytest.approx(0.879, abs=1e-3)
    assert T.gamma_for_step(0.85, D, L, S2) > 0


def test_approx_loss_matches_true_risk_at_small_omega():
    gamma = 0.05
    mu = float(T.mu_gamma(gamma, D, 200, S2))
    true = T.reduced_model_risk(gamma, mu, D, 200, S2, jax.random.key(0), 20_000)
    approx = float(T.approx_loss(jnp.array([gamma, -gamma]), jnp.array([mu, -mu]), D, 200, S2))
    assert true == pytest.approx(approx, abs=0.01)


def test_gradient_flow_reproduces_the_stages():
    """H = 2 from ±1e-3 (spec §10 check): sign matching, zero-sum, then 2ωμ → η*."""
    t, w, m, loss = T.gradient_flow(jnp.array([1e-3, -1e-3]), jnp.array([1e-3, -1e-3]),
                                    lr=0.01, steps=3000, every=50, d=D, length=L, sigma2=S2)
    w, m = np.asarray(w), np.asarray(m)
    i = int(np.argmin(np.abs(np.asarray(t) - 5.5)))
    assert w[i] == pytest.approx([0.224, -0.224], abs=2e-3)
    assert m[i] == pytest.approx([0.224, -0.224], abs=2e-3)
    assert np.all(np.diff(np.asarray(loss)) <= 1e-6)
    assert np.all(np.sign(w[-1]) == np.sign(m[-1]))
    assert abs(m[-1].sum()) < 1e-4


def test_softmax_norms_shrink_with_length():
    a = T.softmax_norms(jax.random.key(0), 500, 40, 5, 0.5).mean()
    b = T.softmax_norms(jax.random.key(0), 500, 400, 5, 0.5).mean()
    assert b < a and a > 1 / np.sqrt(40)


def test_softmax_norms_chunks_and_uniform_limit():
    # scale 0: every pattern is uniform, norm exactly 1/sqrt(L); n not a multiple of the chunk
    z = T.softmax_norms(jax.random.key(1), 70, 9, 3, 0.0, chunk=32)
    assert z.shape == (70,)
    np.testing.assert_allclose(z, 1 / np.sqrt(9), rtol=1e-6)
    # one draw by hand: the same keys the function uses for its first chunk
    got = T.softmax_norms(jax.random.key(2), 4, 6, 3, 0.7, chunk=4)
    kx, kq = jax.random.split(jax.random.split(jax.random.key(2), 1)[0])
    x = np.asarray(jax.random.normal(kx, (4, 6, 3)), np.float64)
    q = np.asarray(jax.random.normal(kq, (4, 3)), np.float64)
    for i in range(4):
        s = 0.7 * np.array([x[i, l] @ q[i] for l in range(6)])
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        assert got[i] == pytest.approx(np.sqrt((p**2).sum()), rel=1e-5)

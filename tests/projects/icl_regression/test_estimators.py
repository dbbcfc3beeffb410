"""Closed-form risks against Monte-Carlo estimates of the predictors' test MSE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.icl_regression import data
from projects.icl_regression import estimators as E

D, L, S2 = 5, 20, 0.1
N_MC = 40_000


@pytest.fixture(scope="module")
def mc():
    eta = 0.7  # an arbitrary step: the formulas hold for every η
    preds = {
        "gd": lambda x, y, q: E.gd(x, y, q, eta),
        "dgd": lambda x, y, q: E.debiased_gd(x, y, q, eta),
        "ridge": lambda x, y, q: E.ridge(x, y, q, S2 * D),
    }
    return eta, E.mc_risks(preds, jax.random.key(0), N_MC, L, D, S2)


def within(mc_pair, exact, k=4.0):
    mean, se = mc_pair
    assert abs(mean - exact) < k * se, (mean, se, exact)


def test_gd_risk_formula(mc):
    eta, res = mc
    within(res["gd"], E.gd_risk(eta, D, L, S2))


def test_debiased_gd_risk_formula(mc):
    eta, res = mc
    within(res["dgd"], E.debiased_gd_risk(eta, D, L, S2))


def test_bayes_risk_is_ridge_risk(mc):
    _, res = mc
    within(res["ridge"], E.bayes_risk(D, L, S2, seed=1, n=N_MC))


def test_optimal_steps():
    etas = np.linspace(0.5, 1.2, 7001)
    r_gd = [E.gd_risk(e, D, 40, S2) for e in etas]
    r_dgd = [E.debiased_gd_risk(e, D, 40, S2) for e in etas]
    assert etas[np.argmin(r_gd)] == pytest.approx(E.gd_opt_eta(D, 40, S2), abs=1e-4)
    assert etas[np.argmin(r_dgd)] == pytest.approx(E.debiased_gd_opt_eta(D, 40, S2), abs=1e-4)
    # Theorem 1's η* = (1 + (1+σ²)d/L)⁻¹ is also the exact optimum of debiased GD.
    assert E.eta_star(D, 40, S2) == pytest.approx(E.debiased_gd_opt_eta(D, 40, S2), rel=1e-12)
    assert E.eta_star(5, 40, 0.1) == pytest.approx(0.879, abs=5e-4)  # spec §7


def test_proportional_limits():
    xi, s2 = 0.2, 3.0
    # Large-L finite formulas approach the limits.
    d, length = 400, 2000
    exact = E.debiased_gd_risk(E.eta_star(d, length, s2), d, length, s2)
    assert exact == pytest.approx(E.gd_risk_proportional(xi, s2), rel=2e-3)
    assert E.bayes_risk(60, 300, s2, seed=0, n=400) == pytest.approx(
        E.bayes_risk_proportional(xi, s2), rel=5e-3)
    ratio = E.gd_risk_proportional(xi, s2) / E.bayes_risk_proportional(xi, s2)
    assert 1.0 < ratio <= E.theorem1_ratio_bound(xi, s2)
    assert E.gd_risk_proportional(xi, s2) == pytest.approx(3.444, abs=1e-3)  # spec §8
    assert E.bayes_risk_proportional(xi, s2) == pytest.approx(3.405, abs=1e-3)


def test_valid_mask_equals_short_prompts():
    pr = data.sample_prompts(jax.random.key(4), 64, 12, 3, 0.1)
    y = pr.y[..., 0]
    valid = jnp.broadcast_to(jnp.arange(12) < 7, (64, 12))
    xg = pr.x.at[:, 7:].set(50.0)
    yg = y.at[:, 7:].set(-50.0)
    fs = (lambda x, y, q, v: E.gd(x, y, q, 0.8, v),
          lambda x, y, q, v: E.debiased_gd(x, y, q, 0.8, valid=v),
          lambda x, y, q, v: E.ridge(x, y, q, 0.3, v),
          lambda x, y, q, v: E.kernel_regressors(x, y, q, [0.3, -0.3], [2.0, -2.0], v))

    @jax.jit
    def both(x, y, xs, ys, q, v):
        return [(f(x, y, q, v), f(xs, ys, q, None)) for f in fs]

    for padded, short in both(xg, yg, pr.x[:, :7], y[:, :7], pr.x_q, valid):
        np.testing.assert_allclose(np.asarray(padded), np.asarray(short), rtol=1e-4, atol=1e-5)


def test_two_head_kernel_tends_to_debiased_gd():
    """Small γ with 2γμ = η: the two-head softmax model equals debiased GD (Theorem 1.1)."""
    eta = 0.8

    @jax.jit
    def predictions(key):
        pr = data.sample_prompts(key, 256, 40, 5, 0.1)
        y = pr.y[..., 0]
        ks = [E.kernel_regressors(pr.x, y, pr.x_q, [g, -g], [eta / (2 * g), -eta / (2 * g)])
              for g in (0.05, 0.01)]
        return E.debiased_gd(pr.x, y, pr.x_q, eta), ks

    dgd, ks = predictions(jax.random.key(2))
    errs = [float(np.sqrt(np.mean((np.asarray(k) - np.asarray(dgd)) ** 2))) for k in ks]
    assert errs[1] < errs[0] / 3  # error shrinks ~linearly in γ
    assert errs[1] < 0.02


def test_single_head_worse_than_debiased_gd():
    res = E.mc_risks(E.standard_predictors(5, 40, 0.1, 0.13, 3.45), jax.random.key(7), 8000, 40,
                     5, 0.1)
    assert res["bayes"][0] < res["debiased_gd"][0] < res["single_head"][0]
    assert res["multihead"][0] == pytest.approx(res["debiased_gd"][0], rel=0.03)

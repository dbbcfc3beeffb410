"""Pattern extraction against planted weights."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from projects.icl_regression import analysis, model


def planted_params(kq_planted, ov_planted):
    """Weights whose circuits are exactly the planted KQ [H, D, D] and OV [H, 1, D].

    With Q_h = I: KQ_h = K_hᵀ/sqrt(D) so K_h = sqrt(D)·KQ_hᵀ; with V_h = I: OV_h = O_h.
    """
    h, width, _ = kq_planted.shape
    eye = np.broadcast_to(np.eye(width)[:, None, :], (width, h, width))
    w_k = np.stack([math.sqrt(width) * kq_planted[i] for i in range(h)], axis=1)  # [D, H, D]
    w_o = np.transpose(ov_planted, (0, 2, 1))  # [H, D, 1]
    return {k: jnp.asarray(v, jnp.float32) for k, v in
            {"w_q": eye, "w_k": w_k, "w_v": eye, "w_o": w_o}.items()}


@pytest.fixture
def planted():
    d, width = 4, 5
    rng = np.random.default_rng(0)
    omegas = np.array([0.2, -0.2, 0.21, 0.0])
    mus = np.array([2.0, -3.0, 1.0, 0.001])
    kq = np.zeros((4, width, width))
    ov = np.zeros((4, 1, width))
    off = 0.01 * rng.standard_normal((4, d, d))
    for h in range(4):
        kq[h, :d, :d] = omegas[h] * np.eye(d) + off[h] * (1 - np.eye(d))
        kq[h, :, d] = rng.standard_normal(width)  # last column: no effect (query y-slot is 0)
        ov[h, 0, d] = mus[h]
        ov[h, 0, :d] = 0.02 * rng.standard_normal(d)
    return d, omegas, mus, kq, ov, off


def test_extraction_from_weights(planted):
    d, omegas, mus, kq, ov, off = planted
    got_kq, got_ov = model.circuits(planted_params(kq, ov))
    np.testing.assert_allclose(np.asarray(got_kq), kq, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_ov), ov, atol=1e-5)
    p = analysis.head_patterns(np.asarray(got_kq), np.asarray(got_ov), d)
    np.testing.assert_allclose(p["omega"], omegas, atol=1e-5)
    np.testing.assert_allclose(p["mu"], mus, atol=1e-5)
    assert p["dummy"].tolist() == [False, False, False, True]
    # off-diagonal ratio = ‖offdiag‖_F / ‖diag‖₂, computed here directly.
    for h in range(3):
        offd = np.linalg.norm(off[h] * (1 - np.eye(d)))
        assert p["offdiag_ratio"][h] == pytest.approx(offd / (abs(omegas[h]) * 2), rel=1e-3)
    lr = abs(mus[:3]) / np.linalg.norm(ov[:3, 0], axis=1)
    np.testing.assert_allclose(p["last_ratio"][:3], lr, rtol=1e-4)


def test_model_summary(planted):
    d, omegas, mus, kq, ov, off = planted
    s = analysis.model_patterns(kq, ov, d)
    assert s["n_dummy"] == 1
    assert s["ov_zero_sum_abs"] == pytest.approx(abs(mus.sum()), abs=1e-9)
    assert s["mu_pos_sum"] == pytest.approx(3.0) and s["mu_neg_sum"] == pytest.approx(-3.0)
    assert s["sign_match"] == 1.0 and s["n_pos"] == 2 and s["n_neg"] == 1
    assert s["eta_eff"] == pytest.approx(np.sum(omegas * mus))
    aw = np.abs(omegas[:3])
    assert s["omega_abs_cv"] == pytest.approx(aw.std() / aw.mean())
    assert s["kq_diag_var"] == pytest.approx(0.0, abs=1e-12)  # planted diagonals are constant


def test_shape_errors():
    with pytest.raises(ValueError, match="KQ must be"):
        analysis.head_patterns(np.zeros((2, 3, 4)), np.zeros((2, 1, 4)), 3)
    with pytest.raises(ValueError, match="OV must be"):
        analysis.head_patterns(np.zeros((2, 4, 4)), np.zeros((2, 2, 4)), 3)


def test_preconditioner_and_cosine():
    d = 3
    omega_mat = np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 2.0]])
    kq = np.zeros((2, 4, 4))
    kq[0, :d, :d] = 0.1 * omega_mat
    kq[1, :d, :d] = -0.1 * omega_mat
    pre = analysis.preconditioner(kq, np.array([0.2, -0.2]), d, np.array([True, True]))
    np.testing.assert_allclose(pre, 0.1 * omega_mat)
    assert analysis.cosine(pre, omega_mat) == pytest.approx(1.0)


def test_effective_preconditioner_is_what_the_prediction_depends_on():
    """Heads that trade off-diagonal mass among themselves leave Γ = Σ_h μ_h KQ_h and, to first
    order in the logits, the prediction unchanged; the per-head ratio still reports them."""
    from projects.icl_regression import data

    d, width, length, omega, mu = 3, 4, 20, 0.02, np.array([2.0, -2.0])
    rng = np.random.default_rng(3)
    b = 0.02 * rng.standard_normal((d, d)) * (1 - np.eye(d))

    def circuits(blocks):
        kq = np.zeros((2, width, width))
        ov = np.zeros((2, 1, width))
        for h in range(2):
            kq[h, :d, :d] = blocks[h]
            ov[h, 0, d] = mu[h]
        return kq, ov

    eye = np.eye(d)
    traded = circuits([omega * eye + b, -omega * eye + b])  # Γ = 4ω·I, b cancels
    clean = circuits([omega * eye, -omega * eye])  # Γ = 4ω·I
    shifted = circuits([omega * eye + b, -omega * eye - b])  # Γ = 4ω·I + 4b

    s = analysis.model_patterns(*traded, d)
    np.testing.assert_allclose(s["gamma"], 4 * omega * eye, atol=1e-12)
    assert s["gamma_offdiag_ratio"] < 1e-9
    assert s["kq_offdiag_ratio"] > 0.5  # the per-head metric sees the traded mass
    assert analysis.model_patterns(*shifted, d)["gamma_offdiag_ratio"] > 0.5

    import jax

    pr = data.sample_prompts(jax.random.key(0), 4096, length, d, 0.1)
    pred = {name: np.asarray(model.forward(planted_params(*c), pr.context, pr.query))[:, 0]
            for name, c in [("traded", traded), ("clean", clean), ("shifted", shifted)]}
    # First order: ŷ ≈ (Σμ) ȳ + (1/L) Σ_l y_l (x_l - x̄)ᵀ Γ x_q with Σμ = 0.
    x, y, xq = (np.asarray(a, np.float64) for a in (pr.x, pr.y[..., 0], pr.x_q))
    first = np.einsum("bl,bld,de,be->b", y, x - x.mean(1, keepdims=True),
                      np.asarray(s["gamma"]), xq) / length
    scale = np.sqrt(np.mean(first**2))
    assert np.sqrt(np.mean((pred["traded"] - first) ** 2)) < 0.1 * scale
    moved = np.sqrt(np.mean((pred["shifted"] - pred["clean"]) ** 2))
    traded_gap = np.sqrt(np.mean((pred["traded"] - pred["clean"]) ** 2))
    assert traded_gap < 0.1 * moved

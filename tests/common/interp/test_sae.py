"""The SAE recovers planted directions; modal features by hand; bad shapes are errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import sae


def _planted(n_per=12, d=24, seed=0):
    """x = 3·r_{v mod 10} + 2·u_{domain} + noise: ten residue directions r_c, three domains."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 13)))
    r, u = q[:, :10].T, q[:, 10:].T
    vals = np.arange(10 * n_per)
    dom = rng.integers(0, 3, len(vals))
    x = 3 * r[vals % 10] + 2 * u[dom] + 0.05 * rng.standard_normal((len(vals), d))
    return x.astype(np.float32), vals % 10, r


def test_sae_recovers_planted_mod10_directions(tmp_path):
    x, res, r = _planted()
    runs = sae.train_saes(x, x, dict_size=12, l1=(0.3,), seeds=(0, 1), steps=1500, lr=3e-3,
                          workdir=tmp_path, log_every=500, progress=False)
    assert len(runs) == 2 and runs.fvu.shape == (2,)
    for m in range(2):
        p = runs.run(m)
        assert runs.fvu[m] < 0.1
        feat, cov = sae.modal_features(np.asarray(sae.encode(p, jnp.asarray(x))), res, 10)
        assert (feat >= 0).all() and cov.min() >= 0.9
        dirs = np.asarray(sae.decoder(p))[feat]  # [10, d]
        cos = np.abs(np.sum(dirs * r, -1))
        assert cos.min() > 0.9, cos  # each residue's modal feature points along its r_c


def test_tied_decoder_is_the_normalised_encoder():
    p = sae.init_sae(jax.random.key(0), 5, 7, tied=True)
    assert "W_dec" not in p
    np.testing.assert_allclose(np.asarray(sae.decoder(p)),
                               np.asarray(p["W_enc"].T / jnp.linalg.norm(p["W_enc"].T, axis=-1,
                                                                          keepdims=True)),
                               rtol=1e-6)
    x = jnp.ones((3, 5))
    assert sae.decode(p, sae.encode(p, x)).shape == (3, 5)


def test_loss_by_hand():
    p = sae.init_sae(jax.random.key(1), 4, 6)
    x = jax.random.normal(jax.random.key(2), (5, 4))
    h = np.maximum((np.asarray(x) - np.asarray(p["b_dec"])) @ np.asarray(p["W_enc"]), 0)
    dec = np.asarray(p["W_dec"]) / np.linalg.norm(np.asarray(p["W_dec"]), axis=-1, keepdims=True)
    xh = h @ dec + np.asarray(p["b_dec"])
    want = np.mean(np.sum((xh - np.asarray(x)) ** 2, -1)) + 0.5 * np.mean(np.abs(h).sum(-1))
    np.testing.assert_allclose(float(sae.sae_loss(p, x, 0.5)), want, rtol=1e-5)


def test_modal_features_by_hand():
    h = np.array([[0, 2, 0], [0, 1, 0.5], [3, 0, 0], [0, 0, 0], [0, 0, 1]], float)
    feat, cov = sae.modal_features(h, np.array([0, 0, 1, 1, 2]), 4)
    np.testing.assert_array_equal(feat, [1, 0, 2, -1])
    np.testing.assert_allclose(cov, [1.0, 0.5, 1.0, 0.0])


def test_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="same d"):
        sae.train_saes(np.zeros((4, 3)), np.zeros((4, 2)), dict_size=4, l1=(0.1,), seeds=(0,),
                       steps=10, workdir=tmp_path, log_every=10)
    with pytest.raises(ValueError, match="multiple of log_every"):
        sae.train_saes(np.zeros((4, 3)), np.zeros((4, 3)), dict_size=4, l1=(0.1,), seeds=(0,),
                       steps=15, workdir=tmp_path, log_every=10)

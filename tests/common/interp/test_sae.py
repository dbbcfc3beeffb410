"""The SAE forward, loss and modal features by hand (training and the recovery of planted
mod-10 directions: tests/projects/successor_heads/test_mod10.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.interp import sae


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

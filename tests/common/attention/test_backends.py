"""``einsum_unit_free`` equals ``jnp.einsum`` whatever axes have size 1."""

import itertools

import jax
import numpy as np
import pytest

from common.attention.backends import einsum_unit_free


@pytest.mark.parametrize("b,q,k,g,s", list(itertools.product((1, 2), (1, 3), (1, 2), (1, 4), (1, 5))))
def test_matches_einsum_for_every_unit_pattern(b, q, k, g, s):
    rng = np.random.default_rng(b * 1000 + q * 100 + k * 10 + g + s)
    qg = rng.standard_normal((b, q, k, g, 6)).astype(np.float32)
    kk = rng.standard_normal((b, s, k, 6)).astype(np.float32)
    got = einsum_unit_free("bqkgd,bskd->bkgqs", qg, kk)
    want = np.einsum("bqkgd,bskd->bkgqs", qg.astype(np.float64), kk.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    p = rng.standard_normal((b, k, g, q, s)).astype(np.float32)
    got = einsum_unit_free("bkgqs,bskd->bqkgd", p, kk)
    want = np.einsum("bkgqs,bskd->bqkgd", p.astype(np.float64), kk.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_unit_free_output_axis_under_jit():
    a = np.ones((3, 1, 2), np.float32)
    b = np.ones((3, 4, 2), np.float32)
    out = jax.jit(lambda a, b: einsum_unit_free("bid,bjd->bij", a, b))(a, b)
    np.testing.assert_allclose(np.asarray(out), np.full((3, 1, 4), 2.0))

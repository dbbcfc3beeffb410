"""``Patch(add=True)``: a vector added to a site (a function vector added to the residual
stream), checked against splitting the forward at the next layer and adding it by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.interp import Intervention, Patch, forward
from tests.common.interp.conftest import make_model


def test_additive_patch_of_resid_post_equals_adding_by_hand():
    model = make_model()
    cfg = model.config
    ids = jnp.asarray([[3, 7, 1, 9, 4], [5, 2, 8, 8, 1]])
    layer, pos = 0, 3
    vec = np.asarray(jax.random.normal(jax.random.key(0), (cfg.d_model,))) * 2
    where = np.zeros((1, 2, 5, 1), bool)
    where[0, :, pos] = True
    iv = Intervention(patches=(Patch("resid_post", jnp.asarray([layer]),
                                     jnp.asarray(vec)[None, None, None], jnp.asarray(where),
                                     add=True),))
    got = np.asarray(forward(model, ids, intervention=iv))
    x = np.asarray(model.resid_pre(ids, layer + 1)).copy()  # resid_post of `layer`
    x[:, pos] += vec
    want = np.asarray(model.forward_from(jnp.asarray(x), layer + 1))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # without a mask the vector is added at every position
    iv_all = Intervention(patches=(Patch("resid_post", jnp.asarray([layer]),
                                         jnp.asarray(vec)[None, None, None], add=True),))
    x_all = np.asarray(model.resid_pre(ids, layer + 1)) + vec
    np.testing.assert_allclose(np.asarray(forward(model, ids, intervention=iv_all)),
                               np.asarray(model.forward_from(jnp.asarray(x_all), layer + 1)),
                               atol=1e-5)
    # a replacing patch of the same value is something else
    rep = Intervention(patches=(Patch("resid_post", jnp.asarray([layer]),
                                      jnp.asarray(vec)[None, None, None], jnp.asarray(where)),))
    assert np.abs(np.asarray(forward(model, ids, intervention=rep)) - want).max() > 1e-2

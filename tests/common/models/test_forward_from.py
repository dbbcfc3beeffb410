"""Splitting the forward at a layer: ``forward_from(resid_pre(ids, l), l)`` is the forward."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.interp import Intervention
from common.models import DecoderLM, ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_mlp=48,
                  max_position=32)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)


@pytest.fixture(scope="module")
def model():
    return DecoderLM(CFG, rngs=nnx.Rngs(1))


@pytest.mark.parametrize("layer", [0, 1, 3, 4])
def test_split_equals_full_forward(model, layer):
    full = np.asarray(model(IDS))
    x = model.resid_pre(IDS, layer)
    np.testing.assert_allclose(np.asarray(model.forward_from(x, layer)), full, atol=1e-5)
    last = model.forward_from(x, layer, last_only=True)
    np.testing.assert_allclose(np.asarray(last)[:, 0], full[:, -1], atol=1e-5)


def test_split_with_hooks_after_the_split(model):
    iv = Intervention.ablate(model, [(2, 1), (3, 0)])
    want = np.asarray(model(IDS, intervention=iv))
    x = model.resid_pre(IDS, 2)
    got = model.forward_from(x, 2, hooks=iv.hooks(model.config))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    # the prefix really is the residual entering layer 2: another layer's gives other logits
    assert np.abs(np.asarray(model.forward_from(model.resid_pre(IDS, 1), 2)) - want).max() > 1e-3


def test_layer_out_of_range(model):
    with pytest.raises(ValueError, match="out of range"):
        model.resid_pre(IDS, 5)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_from(jnp.zeros((1, 3, 32)), -1)

"""Named activation constraints: off by default, the model's names when on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.models import DecoderLM, ModelConfig
from common.models.activation_sharding import activation_sharding, constrain


def test_constrain_is_off_without_a_placement_and_checks_names():
    x = jnp.ones((2, 3, 4))
    assert constrain(x, ("batch", "seq", None)) is x
    with activation_sharding(lambda names, shape: None):
        assert constrain(x, ("batch", "seq", None)) is x
        with pytest.raises(ValueError, match="3 names"):
            constrain(jnp.ones((2, 3)), ("batch", "seq", None))


def test_the_model_names_its_residual_and_logits():
    model = DecoderLM(ModelConfig(n_layers=3), rngs=nnx.Rngs(0))
    ids = jnp.zeros((2, 5), jnp.int32)
    seen = []
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def placement(names, shape):
        seen.append((names, shape))
        return one

    plain = np.asarray(model.forward(ids)[0])
    with activation_sharding(placement):
        placed = np.asarray(model.forward(ids)[0])
    np.testing.assert_array_equal(placed, plain)
    assert (("batch", "seq", None), (2, 5, 64)) in seen  # each layer's input (traced once)
    assert (("batch", "seq", "vocab"), (2, 5, 256)) in seen

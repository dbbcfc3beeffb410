"""forward_memory: the compiler's bytes of the jitted forward, against closed-form sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.interp import Intervention
from common.models import DecoderLM, ModelConfig
from common.models.program_memory import forward_memory


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=101, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=48,
                      attn_backend="reference")
    return DecoderLM(cfg, rngs=nnx.Rngs(0))


def _param_bytes(model) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))


def test_arguments_and_outputs_are_the_arrays_passed_and_returned(model):
    ids = jnp.zeros((2, 24), jnp.int32)
    mem = forward_memory(model, ids)
    assert mem.argument == _param_bytes(model) + ids.size * 4
    assert mem.output == 2 * 24 * 101 * 4  # float32 logits
    assert mem.total == mem.temp + mem.argument + mem.output
    last = forward_memory(model, ids, last_only=True)
    assert last.output == 2 * 1 * 101 * 4


def test_temporaries_grow_with_the_attention_scores(model):
    """The reference backend materialises [batch, heads, seq, seq] float32 scores: 4x the
    tokens, at least 16x those bytes more in temporaries."""
    small = forward_memory(model, jnp.zeros((1, 32), jnp.int32)).temp
    big = forward_memory(model, jnp.zeros((1, 128), jnp.int32)).temp
    assert big - small >= 4 * (128 * 128 - 32 * 32) * 4


def test_intervention_arrays_are_arguments(model):
    ids = jnp.zeros((1, 16), jnp.int32)
    gate = np.ones((2, 4), np.float32)
    iv = Intervention(gate=jnp.asarray(gate))
    assert forward_memory(model, ids, intervention=iv).argument == (
        forward_memory(model, ids).argument + gate.nbytes)


def test_bad_ids(model):
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        forward_memory(model, jnp.zeros((5,), jnp.int32))

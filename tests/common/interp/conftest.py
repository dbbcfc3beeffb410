"""Tiny models shared by the interp tests (session-scoped: compiled programs are reused)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.hooks import SITES
from common.models import DecoderLM, ModelConfig

# Grouped-query attention (4 query heads on 2 key/value heads), RoPE, RMSNorm, SwiGLU.
TINY = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                   d_mlp=48, rope_theta=100.0)
BATCH, SEQ = 2, 6


def make_model(config: ModelConfig = TINY, seed: int = 0) -> DecoderLM:
    """A tiny model with random weights drawn in numpy (no per-op compiles): norm scales
    ``1 + 0.2·n``, biases ``0.2·n``, kernels ``n / sqrt(fan_in)``, embeddings ``n``, so every
    parameter matters and attention patterns are far from uniform."""
    model = nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree_util.tree_flatten_with_path(state)
    rng = np.random.default_rng(seed)
    new = []
    for path, x in leaves:
        name = jax.tree_util.keystr(path)
        n = rng.standard_normal(x.shape).astype(np.float32)
        fan = x.shape[1:] if "blocks" in name else x.shape  # the stack's layer axis is no fan-in
        if "scale" in name:
            v = 1.0 + 0.2 * n
        elif "bias" in name:
            v = 0.2 * n
        elif "embedding" in name:
            v = n
        elif "o_kernel" in name:
            v = n / np.sqrt(fan[0] * fan[1])
        else:
            v = n / np.sqrt(fan[0])
        new.append(jnp.asarray(v))
    nnx.update(model, jax.tree_util.tree_unflatten(tree, new))
    return model


@pytest.fixture(scope="session")
def tiny():
    return make_model()


@pytest.fixture(scope="session")
def ids():
    return jnp.asarray(np.random.default_rng(1).integers(0, TINY.vocab_size, (BATCH, SEQ)),
                       jnp.int32)


@pytest.fixture(scope="session")
def corrupted(ids):
    return jnp.asarray(np.roll(np.asarray(ids), 1, axis=1), jnp.int32)


ALL_SITES = SITES  # every site of the table, the optional ones included


@pytest.fixture(scope="session")
def full_cache(tiny, ids):
    """``(logits, cache)`` of every site at every layer of the tiny model on ``ids``."""
    from common.interp import run_with_cache

    return run_with_cache(tiny, ids, names_filter=ALL_SITES)

"""``MultiHeadAttention(x, kv_x=...)``: keys and values from another sequence (cross-attention),
checked against a brute-force loop over batch, heads, queries and keys; the default path is
unchanged (kv_x=None is bit-identical to passing nothing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.layer import MultiHeadAttention
from common.attention.masks import Mask
from common.attention.rope import RoPE


def brute_force(attn: MultiHeadAttention, x, kv_x, valid=None):
    """Loops in numpy: out[b, i] = Σ_h Σ_j softmax_j(q_bhi·k_bhj / √d) v_bhj W_O[h]."""
    wq, wk, wv, wo = (np.asarray(a[...], np.float64) for a in
                      (attn.q_kernel, attn.k_kernel, attn.v_kernel, attn.o_kernel))
    x, kv_x = np.asarray(x, np.float64), np.asarray(kv_x, np.float64)
    b, sq, d_model = x.shape
    skv = kv_x.shape[1]
    heads, kvh, hd = wq.shape[1], wk.shape[1], wq.shape[2]
    out = np.zeros((b, sq, d_model))
    for bi in range(b):
        for h in range(heads):
            g = h // (heads // kvh)
            for i in range(sq):
                q = x[bi, i] @ wq[:, h, :]
                logits = np.array([q @ (kv_x[bi, j] @ wk[:, g, :]) / np.sqrt(hd)
                                   for j in range(skv)])
                if valid is not None:
                    logits = np.where(valid[bi], logits, -np.inf)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                z = sum(p[j] * (kv_x[bi, j] @ wv[:, g, :]) for j in range(skv))
                out[bi, i] += z @ wo[h]
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_cross_attention_matches_brute_force(heads, kv_heads):
    b, sq, skv, d = 2, 3, 5, 8
    attn = MultiHeadAttention(d, heads, kv_heads, 4, rngs=nnx.Rngs(0), init_std=0.5,
                              backend="reference")
    x = jax.random.normal(jax.random.key(1), (b, sq, d))
    kv_x = jax.random.normal(jax.random.key(2), (b, skv, d))
    got, cache = attn(x, positions=None, mask=None, kv_x=kv_x)
    assert got.shape == (b, sq, d) and cache is None
    np.testing.assert_allclose(np.asarray(got), brute_force(attn, x, kv_x), atol=1e-5, rtol=1e-5)
    # a key-padding mask over the kv sequence
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    got_m, _ = attn(x, positions=None, mask=Mask(kv_valid=jnp.asarray(valid)), kv_x=kv_x)
    np.testing.assert_allclose(np.asarray(got_m), brute_force(attn, x, kv_x, valid),
                               atol=1e-5, rtol=1e-5)
    # the auto backend gives the same numbers
    auto = MultiHeadAttention(d, heads, kv_heads, 4, rngs=nnx.Rngs(0), init_std=0.5)
    got_auto, _ = auto(x, positions=None, mask=None, kv_x=kv_x)
    np.testing.assert_allclose(np.asarray(got_auto), np.asarray(got), atol=1e-5, rtol=1e-5)


def test_default_path_unchanged_and_self_equals_kv_x_is_x():
    b, s, d = 2, 6, 8
    attn = MultiHeadAttention(d, 2, 2, 4, rngs=nnx.Rngs(3), init_std=0.5)
    x = jax.random.normal(jax.random.key(4), (b, s, d))
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    a, _ = attn(x, positions=pos, mask=Mask(causal=True))
    c, _ = attn(x, positions=pos, mask=Mask(causal=True), kv_x=x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_allclose(np.asarray(attn(x, positions=pos, mask=None)[0]),
                               brute_force(attn, x, x), atol=1e-5, rtol=1e-5)


def test_kv_x_refuses_rope():
    attn = MultiHeadAttention(8, 2, 2, 4, rngs=nnx.Rngs(0), rope=RoPE(4))
    x = jnp.ones((1, 2, 8))
    with pytest.raises(ValueError, match="kv_x"):
        attn(x, positions=jnp.zeros((1, 2), jnp.int32), mask=None, kv_x=jnp.ones((1, 3, 8)))

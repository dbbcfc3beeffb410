"""Head views against the captured activations they must reproduce."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.interp import OV, QK, W_E, W_K, W_O, W_Q, W_U, W_V, b_O, effective_embedding
from tests.common.interp.conftest import TINY

L, H, KV, D = TINY.n_layers, TINY.n_heads, TINY.n_kv_heads, TINY.d_head


def _normed(model, layer, x):
    x = np.asarray(x, np.float64)
    scale = np.asarray(model.block(layer).attn_norm.scale[...], np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + TINY.norm_eps) * scale


def test_shapes_and_labels(tiny):
    assert W_Q(tiny).axes == ("layer", "head", "d_model", "d_head")
    assert W_Q(tiny).shape == (L, H, TINY.d_model, D)
    assert W_K(tiny).shape == (L, H, TINY.d_model, D)
    assert W_K(tiny, expand=False).axes == ("layer", "kv_head", "d_model", "d_head")
    assert W_V(tiny, expand=False).shape == (L, KV, TINY.d_model, D)
    assert W_O(tiny).shape == (L, H, D, TINY.d_model)
    assert OV(tiny, layers=[1]).shape == (1, H, TINY.d_model, TINY.d_model)
    assert OV(tiny, layers=[1]).labels("layer") == (1,)
    assert b_O(tiny).shape == (L, TINY.d_model) and not np.asarray(b_O(tiny)).any()
    assert W_E(tiny).shape == (TINY.vocab_size, TINY.d_model)
    assert W_U(tiny).shape == (TINY.d_model, TINY.vocab_size)


def test_per_head_projections_reproduce_q_k_v_and_head_out(tiny, full_cache):
    """q[h] = norm(x) @ W_Q[h]; k, v of query head h (GQA-expanded) = those of kv head h//g."""
    c = full_cache[1]
    g = H // KV
    for layer in range(L):
        x = _normed(tiny, layer, c["resid_pre", layer])
        for h in range(H):
            for site, view in (("q", W_Q), ("k", W_K), ("v", W_V)):
                w = np.asarray(view(tiny).values[layer, h], np.float64)
                got = np.asarray(c[site, layer])[:, :, h if site == "q" else h // g]
                np.testing.assert_allclose(got, x @ w, atol=1e-5, rtol=0)
            ho = np.asarray(c["z", layer])[:, :, h] @ np.asarray(W_O(tiny).values[layer, h])
            np.testing.assert_allclose(np.asarray(c["head_out", layer])[:, :, h], ho, atol=1e-5)


def test_ov_and_qk_circuits(tiny, full_cache):
    """At the first position a head attends only to itself: head_out = norm(x) @ OV; and RoPE
    rotates query and key of one position alike: rot_q·rot_k = norm(x) QK norm(x)ᵀ."""
    c = full_cache[1]
    ov, qk = np.asarray(OV(tiny).values), np.asarray(QK(tiny).values)
    g = H // KV
    for layer in range(L):
        x = _normed(tiny, layer, c["resid_pre", layer])
        for h in range(H):
            np.testing.assert_allclose(np.asarray(c["head_out", layer])[:, 0, h],
                                       x[:, 0] @ ov[layer, h], atol=1e-5, rtol=0)
            score = np.einsum("bsd,bsd->bs", np.asarray(c["rot_q", layer])[:, :, h],
                              np.asarray(c["rot_k", layer])[:, :, h // g])
            want = np.einsum("bsd,de,bse->bs", x, qk[layer, h], x)
            np.testing.assert_allclose(score, want, atol=1e-4, rtol=1e-5)


def test_effective_embedding(tiny):
    tokens = jnp.asarray([3, 7, 11])
    block = tiny.block(0)
    x = np.asarray(W_E(tiny))[np.asarray(tokens)].astype(np.float64)
    n = x / np.sqrt((x * x).mean(-1, keepdims=True) + TINY.norm_eps)
    n = n * np.asarray(block.mlp_norm.scale[...])
    gate = n @ np.asarray(block.mlp.gate_kernel[...])
    up = n @ np.asarray(block.mlp.up_kernel[...])
    want = x + ((gate / (1 + np.exp(-gate))) * up) @ np.asarray(block.mlp.down_kernel[...])
    got = jax.jit(lambda t: effective_embedding(tiny, t))(tokens)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
    shape = jax.eval_shape(lambda t: effective_embedding(tiny, t, mode="block0"), tokens).shape
    assert shape == (3, TINY.d_model)

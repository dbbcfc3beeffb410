"""run_with_cache: requested sites only, labelled axes, values against hand computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common.attention.backends as backends
from common.interp import ActivationCache, Labelled, forward, run_with_cache
from tests.common.interp.by_hand import causal_pattern_and_z
from tests.common.interp.conftest import TINY, make_model


def test_only_requested_sites_are_kept(tiny, ids):
    logits, cache = run_with_cache(tiny, ids, names_filter=["z", "attn_out"], layers=[1])
    assert isinstance(cache, ActivationCache)
    assert set(cache) == {("z", 1), ("attn_out", 1)}
    assert cache.axes("z") == ("batch", "pos", "head", "d_head")
    assert cache["z", 1].shape == (2, 6, TINY.n_heads, TINY.d_head)
    with pytest.raises(KeyError, match="captured at layers"):
        cache["z", 0]
    with pytest.raises(KeyError, match="'pattern' was not captured"):
        cache["pattern", 1]
    # The capture does not change the forward.
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(tiny, ids)))


def test_stacked_view_is_labelled(full_cache):
    cache = full_cache[1]
    z = cache["z"]
    assert isinstance(z, Labelled)
    assert z.axes == ("layer", "batch", "pos", "head", "d_head")
    assert z.labels("layer") == (0, 1)
    np.testing.assert_array_equal(np.asarray(z.sel(layer=1)), np.asarray(cache["z", 1]))
    assert cache["k"].axes[3] == "kv_head" and cache["k"].shape[3] == TINY.n_kv_heads
    # Labelled flows through jit as a pytree.
    doubled = jax.jit(lambda a: a.map(lambda v: 2 * v))(z)
    assert doubled.axes == z.axes
    np.testing.assert_allclose(np.asarray(doubled), 2 * np.asarray(z))


def test_pattern_computed_only_where_requested(tiny, ids, monkeypatch):
    """A plain forward never runs the materialising path; a pattern at layer 1 runs it there
    (checked on the traced program: jax.eval_shape traces without compiling)."""
    calls = []
    real = backends.reference_attention

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(backends, "reference_attention", spy)

    def trace(**kw):
        calls.clear()
        return jax.eval_shape(lambda: run_with_cache(tiny, ids, jit=False, **kw)[1])

    trace(names_filter=("z", "head_out", "attn_out"))
    assert calls == [] or backends.auto_order() == ("reference",)
    cache = trace(names_filter="pattern", layers=[1])
    assert len(calls) == 1 and set(cache) == {("pattern", 1)}


def _rms(x, scale, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def test_pattern_and_z_by_hand(full_cache):
    """pattern = softmax(rot_q rot_kᵀ / sqrt(d) + causal) with GQA by hand; z = pattern @ v."""
    c = full_cache[1]
    for layer in range(TINY.n_layers):
        p, z = causal_pattern_and_z(c, layer, TINY.n_heads, TINY.n_kv_heads, TINY.d_head)
        np.testing.assert_allclose(np.asarray(c["pattern", layer]), p, atol=2e-6, rtol=0)
        np.testing.assert_allclose(np.asarray(c["z", layer]), z, atol=2e-6, rtol=0)


def test_q_k_v_are_the_projections_of_the_normed_residual(tiny, full_cache):
    c = full_cache[1]
    attn = tiny.block(1).attn
    x = np.asarray(_rms(c["resid_pre", 1], tiny.block(1).attn_norm.scale[...], TINY.norm_eps))
    for site, kernel in (("q", attn.q_kernel), ("k", attn.k_kernel), ("v", attn.v_kernel)):
        want = np.einsum("bsd,dhk->bshk", x, np.asarray(kernel[...]))
        np.testing.assert_allclose(np.asarray(c[site, 1]), want, atol=1e-5, rtol=0)


def test_head_out_sums_to_attn_out_with_o_bias():
    model = make_model(TINY.replace(o_bias=True), seed=3)
    assert np.abs(np.asarray(model.block(0).attn.o_bias[...])).max() > 0.05
    ids = jnp.arange(12).reshape(2, 6) % TINY.vocab_size
    _, c = run_with_cache(model, ids, names_filter=("z", "head_out", "attn_out"))
    for layer in range(TINY.n_layers):
        ho = np.asarray(c["head_out", layer], np.float64)
        assert c.axes("head_out") == ("batch", "pos", "head", "d_model")
        wo = np.asarray(model.block(layer).attn.o_kernel[...], np.float64)
        want = np.einsum("bshk,hkd->bshd", np.asarray(c["z", layer], np.float64), wo)
        np.testing.assert_allclose(ho, want, atol=1e-6, rtol=0)
        total = ho.sum(2) + np.asarray(model.block(layer).attn.o_bias[...])
        np.testing.assert_allclose(total, np.asarray(c["attn_out", layer]), atol=2e-6, rtol=0)


def test_residual_bookkeeping(tiny, ids, full_cache):
    """resid_post = resid_pre + attn_out + mlp_out; the last resid_post gives the logits."""
    logits, c = full_cache
    plain = jax.eval_shape(lambda: run_with_cache(tiny, ids, jit=False)[1])
    assert "pattern" not in plain and "head_out" not in plain  # expensive sites only on request
    assert "resid_mid" in plain and "z" in plain
    for layer in range(TINY.n_layers):
        np.testing.assert_allclose(
            np.asarray(c["resid_post", layer]),
            np.asarray(c["resid_pre", layer] + c["attn_out", layer] + c["mlp_out", layer]),
            atol=1e-6, rtol=0)
    last = c["resid_post", TINY.n_layers - 1]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(tiny.unembed(last)), atol=1e-5)


def test_bad_names_and_layers(tiny, ids):
    with pytest.raises(ValueError, match=r"names_filter: unknown site 'hook_z'"):
        run_with_cache(tiny, ids, names_filter="hook_z")
    with pytest.raises(ValueError, match=r"layers: layer 2 out of range \[0, 2\)"):
        run_with_cache(tiny, ids, names_filter="z", layers=[2])
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        run_with_cache(tiny, ids[0], names_filter="z")


def test_method_on_the_model(tiny, ids):
    logits, cache = tiny.run_with_cache(ids, names_filter=["z", "attn_out"], layers=1)
    assert set(cache) == {("z", 1), ("attn_out", 1)}
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(tiny, ids)))

"""Issue 12 item 3: the sites ``attn_scores``, ``mlp_pre``, ``mlp_post``, ``ln1_scale``,
``ln2_scale``, ``ln_final_scale`` on the tiny model: each equals a float64 hand computation from
other captured sites and the weights, and each is patchable and differentiable. Freezing the
final norm's scale makes direct logit attribution exact. (transformers' hooks on SmolLM2:
tests/common/interp/test_smollm2.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.hooks import OPTIONAL_SITES, SITE_TABLE
from common.interp import ActivationCache, Intervention, Patch, forward, run_with_cache
from tests.common.interp.conftest import TINY

L, H, KV, D = TINY.n_layers, TINY.n_heads, TINY.n_kv_heads, TINY.d_head
G = H // KV
NEW = ("attn_scores", "mlp_pre", "mlp_post", "ln1_scale", "ln2_scale", "ln_final_scale")


def _np(x):
    return np.asarray(x, np.float64)


def _rms(x, eps):
    return np.sqrt((x * x).mean(-1) + eps)


def _silu(x):
    return x / (1 + np.exp(-x))


def test_the_table_declares_them(tiny, ids, full_cache):
    _, cache = full_cache
    assert SITE_TABLE["attn_scores"].optional and "attn_scores" in OPTIONAL_SITES
    assert SITE_TABLE["ln_final_scale"].final and not SITE_TABLE["ln1_scale"].final
    assert cache.axes("mlp_post") == ("batch", "pos", "d_mlp")
    assert cache.axes("ln1_scale") == ("batch", "pos")
    assert cache["attn_scores", 0].shape == (2, H, 6, 6)
    assert cache["mlp_pre", 1].shape == (2, 6, TINY.d_mlp)
    assert cache.layers("ln_final_scale") == (L,)  # one past the last block
    assert cache["ln_final_scale"].axes == ("batch", "pos")  # no layer axis
    np.testing.assert_array_equal(np.asarray(cache["ln_final.hook_scale"]),
                                  np.asarray(cache["ln_final_scale", L]))
    np.testing.assert_array_equal(np.asarray(cache["blocks.1.ln2.hook_scale"]),
                                  np.asarray(cache["ln2_scale", 1]))
    # The default filter keeps every non-optional site, the final one included.
    _, default = run_with_cache(tiny, ids)
    assert {"mlp_pre", "mlp_post", "ln1_scale", "ln2_scale", "ln_final_scale"} <= set(default.sites)
    assert "attn_scores" not in default.sites


def test_each_site_by_hand(tiny, full_cache):
    logits, c = full_cache
    eps = TINY.norm_eps
    for layer in range(L):
        blk = tiny.block(layer)
        # Norm scales: the divisor sqrt(mean(x²) + eps) of the norm's input.
        x = _np(c["resid_pre", layer])
        np.testing.assert_allclose(_np(c["ln1_scale", layer]), _rms(x, eps), rtol=1e-6)
        mid = _np(c["resid_mid", layer])
        np.testing.assert_allclose(_np(c["ln2_scale", layer]), _rms(mid, eps), rtol=1e-6)
        # Scores: rot_q · rot_k / sqrt(d_head) where causal, float32's lowest value elsewhere.
        q = _np(c["rot_q", layer])
        k = np.repeat(_np(c["rot_k", layer]), G, axis=2)
        want = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
        got = _np(c["attn_scores", layer])
        causal = np.tril(np.ones((6, 6), bool))
        np.testing.assert_allclose(got[..., causal], want[..., causal], atol=1e-5, rtol=1e-5)
        assert (got[..., ~causal] == np.finfo(np.float32).min).all()
        e = np.exp(np.where(causal, want, -np.inf) - want.max(-1, keepdims=True))
        np.testing.assert_allclose(_np(c["pattern", layer]), e / e.sum(-1, keepdims=True),
                                   atol=1e-6)
        # MLP: normalised resid_mid -> gate projection (mlp_pre) -> silu(pre)·up (mlp_post).
        normed = mid / _rms(mid, eps)[..., None] * _np(blk.mlp_norm.scale[...])
        pre = normed @ _np(blk.mlp.gate_kernel[...])
        np.testing.assert_allclose(_np(c["mlp_pre", layer]), pre, atol=1e-5, rtol=1e-5)
        post = _silu(pre) * (normed @ _np(blk.mlp.up_kernel[...]))
        np.testing.assert_allclose(_np(c["mlp_post", layer]), post, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(_np(c["mlp_out", layer]), post @ _np(blk.mlp.down_kernel[...]),
                                   atol=1e-5, rtol=1e-5)
    final = _np(c["resid_post", L - 1])
    s = _rms(final, eps)
    np.testing.assert_allclose(_np(c["ln_final_scale"]), s, rtol=1e-6)
    want = (final / s[..., None] * _np(tiny.final_norm.scale[...])) @ _np(tiny.lm_head[...])
    np.testing.assert_allclose(_np(logits), want, atol=1e-4, rtol=1e-5)


def test_capturing_them_leaves_the_forward_unchanged(tiny, ids):
    plain = np.asarray(forward(tiny, ids))
    for names in (("mlp_pre", "mlp_post", "ln1_scale", "ln2_scale", "ln_final_scale"),
                  ("attn_scores",)):
        logits, _ = run_with_cache(tiny, ids, names_filter=names)
        if "attn_scores" in names:  # the reference attention path: the same to rounding
            np.testing.assert_allclose(np.asarray(logits), plain, atol=2e-5, rtol=0)
        else:  # observed, not edited: bit for bit
            np.testing.assert_array_equal(np.asarray(logits), plain)


def test_patching_them_equals_weight_edits(tiny, ids, full_cache):
    _, c = full_cache
    # mlp_post = 0 at layer 1 is a zero down projection there.
    zero = Intervention(patches=(Patch(site="mlp_post", layers=(1,),
                                       value=jnp.zeros((1, 1, 1, TINY.d_mlp))),))
    edited = nnx.clone(tiny)
    edited.blocks.mlp.down_kernel[...] = edited.blocks.mlp.down_kernel[...].at[1].set(0.0)
    np.testing.assert_allclose(np.asarray(forward(tiny, ids, intervention=zero)),
                               np.asarray(forward(edited, ids)), atol=1e-5, rtol=0)
    # mlp_pre is what the nonlinearity sees: replacing it by 0 makes silu(0)·up = 0 too.
    zero_pre = Intervention(patches=(Patch(site="mlp_pre", layers=(1,),
                                           value=jnp.zeros((1, 1, 1, TINY.d_mlp))),))
    np.testing.assert_allclose(np.asarray(forward(tiny, ids, intervention=zero_pre)),
                               np.asarray(forward(edited, ids)), atol=1e-5, rtol=0)
    # Doubling the final norm's divisor halves every logit (the model has no final bias).
    s = c["ln_final_scale", L][None]
    double = Intervention(patches=(Patch(site="ln_final_scale", layers=(L,), value=2 * s),))
    np.testing.assert_allclose(np.asarray(forward(tiny, ids, intervention=double)),
                               np.asarray(forward(tiny, ids)) / 2, atol=1e-5, rtol=1e-6)
    # ln1_scale doubled at layer 0 = the attention norm's weight halved there.
    d1 = Intervention(patches=(Patch(site="ln1_scale", layers=(0,),
                                     value=2 * c["ln1_scale", 0][None]),))
    half = nnx.clone(tiny)
    scale = half.blocks.attn_norm.scale  # [n_layers, d_model]
    scale[...] = scale[...].at[0].divide(2)
    np.testing.assert_allclose(np.asarray(forward(tiny, ids, intervention=d1)),
                               np.asarray(forward(half, ids)), atol=1e-5, rtol=0)
    # Scores of head (0, 1): everything but key 0 at -1e9 -> its z is token 0's value.
    big = jnp.full((1, 1, H, 6, 6), -1e9).at[..., 0].set(0.0)
    where = jnp.zeros((1, 1, H, 1, 1), bool).at[0, 0, 1].set(True)
    iv = Intervention(patches=(Patch(site="attn_scores", layers=(0,), value=big, where=where,
                                     static_layers=(0,)),))
    _, got = run_with_cache(tiny, ids, names_filter=("z", "v", "pattern"), layers=0,
                            intervention=iv)
    v0 = _np(got["v", 0])[:, 0, 1 // G]
    np.testing.assert_allclose(_np(got["z", 0])[:, :, 1], np.repeat(v0[:, None], 6, 1), atol=1e-6)
    assert (_np(got["pattern", 0])[:, 1, :, 0] == 1).all()
    np.testing.assert_allclose(_np(got["z", 0])[:, :, [0, 2, 3]], _np(c["z", 0])[:, :, [0, 2, 3]],
                               atol=1e-6, rtol=0)


def test_gradients_through_them(tiny, ids, full_cache):
    """d logit / d site by jax.grad through a patch = a central finite difference; for the final
    norm's divisor also = -logit / s (logits are linear in 1/s)."""
    _, c = full_cache
    tok = 7

    def metric(site, layer, value):
        iv = Intervention(patches=(Patch(site=site, layers=(layer,), value=value[None],
                                         static_layers=(layer,)),))
        return tiny(ids, intervention=iv)[:, -1, tok].sum()

    rng = np.random.default_rng(0)
    for site, layer in (("mlp_post", 0), ("mlp_pre", 1), ("ln1_scale", 1), ("ln2_scale", 0),
                        ("attn_scores", 1), ("ln_final_scale", L)):
        x0 = c[site, layer]
        g = jax.jit(jax.grad(lambda v, s=site, la=layer: metric(s, la, v)))(x0)
        assert g.shape == x0.shape and np.abs(np.asarray(g)).max() > 0
        d = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
        if site == "attn_scores":  # perturb only the unmasked scores
            d = d * jnp.tril(jnp.ones((6, 6)))
        finite = jnp.abs(x0)[x0 > -1e30]  # the scores' masked entries are float32's lowest
        eps = 1e-2 * float(finite.mean()) / float(jnp.abs(d).mean())
        f = jax.jit(lambda v, s=site, la=layer: metric(s, la, v))
        fd = (float(f(x0 + eps * d)) - float(f(x0 - eps * d))) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(g, d)), fd, rtol=2e-2, atol=1e-3)
    s = c["ln_final_scale", L]
    g = jax.grad(lambda v: metric("ln_final_scale", L, v))(s)
    logit = np.asarray(forward(tiny, ids))[:, -1, tok]
    np.testing.assert_allclose(np.asarray(g)[:, -1], -logit / np.asarray(s)[:, -1], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(g)[:, :-1], 0.0)


def test_frozen_final_scale_makes_direct_logit_attribution_exact(tiny, ids, full_cache):
    """TransformerLens' apply_ln_to_stack: with the final norm's divisor frozen, the logit is
    the sum of each component's (embedding, each attention and MLP output) contribution, and
    ablating a last-layer head moves the logit by exactly minus its attribution."""
    logits, c = full_cache
    tok = 11
    s = _np(c["ln_final_scale"])[:, -1]  # [batch]: the last position's divisor
    w_u = _np(tiny.final_norm.scale[...]) * _np(tiny.lm_head[...])[:, tok]  # [d_model]
    parts = [_np(c["resid_pre", 0])[:, -1]]
    for layer in range(L):
        parts += [_np(c["attn_out", layer])[:, -1], _np(c["mlp_out", layer])[:, -1]]
    dla = np.stack(parts) / s[None, :, None] @ w_u  # [component, batch]
    np.testing.assert_allclose(dla.sum(0), _np(logits)[:, -1, tok], atol=1e-4, rtol=1e-5)

    head = 2
    head_dla = (_np(c["head_out", L - 1])[:, -1, head] / s[:, None]) @ w_u  # [batch]
    ablate = Intervention.ablate(TINY, [(L - 1, head)])
    # Freeze the final norm's divisor, and the last MLP (it reads the residual the head wrote).
    freeze = Intervention.patch(TINY, c, "ln_final_scale").merge(
        Intervention.patch(TINY, c, "mlp_out", layers=[L - 1]))
    frozen = _np(forward(tiny, ids, intervention=ablate.merge(freeze)))[:, -1, tok]
    np.testing.assert_allclose(frozen - _np(logits)[:, -1, tok], -head_dla, atol=1e-5, rtol=1e-5)
    # Without the norm's freeze it rescales: the change is not the attribution.
    mlp_only = Intervention.patch(TINY, c, "mlp_out", layers=[L - 1])
    free = _np(forward(tiny, ids, intervention=ablate.merge(mlp_only)))[:, -1, tok]
    assert np.abs((free - _np(logits)[:, -1, tok]) + head_dla).max() > 1e-3


def test_final_site_patch_and_cache_rules(tiny, ids, full_cache):
    _, c = full_cache
    p = Intervention.patch(tiny, c, "ln_final_scale").patches[0]
    assert tuple(p.layers) == (L,) and p.value.shape == (1, 2, 6)
    with pytest.raises(ValueError, match="final norm's, at layer 2 only"):
        Intervention.patch(tiny, c, "ln_final_scale", layers=[1])
    bad = Patch(site="ln_final_scale", layers=(1,), value=c["ln_final_scale", L][None])
    with pytest.raises(ValueError, match=r"layers: layer 1 out of range \(2,\)"):
        forward(tiny, ids, intervention=Intervention(patches=(bad,)))
    bad = Patch(site="mlp_post", layers=(L,), value=jnp.zeros((1, 1, 1, TINY.d_mlp)))
    with pytest.raises(ValueError, match=r"layers: layer 2 out of range \[0, 2\)"):
        forward(tiny, ids, intervention=Intervention(patches=(bad,)))
    # ``layers`` selects blocks; the final site is kept whenever it is named.
    _, one = run_with_cache(tiny, ids, names_filter=("ln1_scale", "ln_final_scale"), layers=0)
    assert one.layers("ln1_scale") == (0,) and one.layers("ln_final_scale") == (L,)
    by_hand = ActivationCache({("ln_final_scale", L): c["ln_final_scale", L]})  # no n_layers
    np.testing.assert_array_equal(np.asarray(by_hand["ln_final.hook_scale"]),
                                  np.asarray(c["ln_final_scale", L]))

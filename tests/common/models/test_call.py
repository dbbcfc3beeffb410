"""``model(ids)`` at the jitted forward's speed (issue 12 item 5), still traceable; the norm and
MLP sites (item 3) by hand on every architecture (RMSNorm/SwiGLU, LayerNorm/GELU, parallel
residual)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.models import DecoderLM, ModelConfig
from common.models.capture import _capture_jit, forward, run_with_cache
from common.models.layers import ACTIVATIONS

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_mlp=48)
EXTRA = {"llama": dict(n_kv_heads=2),
         "gpt2": dict(norm="layer", act="gelu_tanh", gated_mlp=False, pos="learned", qkv_bias=True,
                      o_bias=True, mlp_bias=True, max_position=64, tie_embeddings=True),
         "neox": dict(norm="layer", act="gelu", gated_mlp=False, rotary_dim=2,
                      parallel_residual=True, qkv_bias=True, o_bias=True, mlp_bias=True)}


def _model(arch: str) -> DecoderLM:
    model = DecoderLM(ModelConfig(arch=arch, **TINY, **EXTRA[arch]), rngs=nnx.Rngs(1))
    # Norm weights and biases away from 1 and 0, so that each one matters.
    rng = np.random.default_rng(0)
    for name in ("attn_norm", "mlp_norm"):
        for norm in (getattr(model.blocks, name),):  # the stack: [n_layers, d_model]
            norm.scale[...] = jnp.asarray(1 + 0.2 * rng.standard_normal(norm.scale.shape), jnp.float32)
            if norm.bias is not None:
                norm.bias[...] = jnp.asarray(0.2 * rng.standard_normal(norm.bias.shape), jnp.float32)
    return model


@pytest.fixture(scope="module")
def llama():
    return _model("llama")


@pytest.fixture(scope="module")
def ids():
    return jnp.asarray(np.random.default_rng(3).integers(0, 61, (2, 7)), jnp.int32)


def test_call_is_the_jitted_forward_and_compiles_once(llama, ids, monkeypatch):
    want = np.asarray(forward(llama, ids))
    np.testing.assert_array_equal(np.asarray(llama(ids)), want)  # the same program
    n = _capture_jit._cache_size()
    traced = []
    plain_forward = DecoderLM.forward

    def counting(self, *a, **kw):
        traced.append(1)
        return plain_forward(self, *a, **kw)

    monkeypatch.setattr(DecoderLM, "forward", counting)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(llama(ids)), want)
    np.testing.assert_array_equal(np.asarray(llama(np.asarray(ids))), want)  # numpy ids too
    assert traced == [] and _capture_jit._cache_size() == n  # no Python forward, no compile
    llama(ids[:, :5])  # a new shape traces once
    assert traced == [1]


def test_call_inside_transformations_runs_inline(llama, ids, monkeypatch):
    want = np.asarray(forward(llama, ids))
    n = _capture_jit._cache_size()
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: llama(x))(ids)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(llama, ids)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda x: llama(x[None])[0])(ids)), want,
                               atol=1e-5)
    assert _capture_jit._cache_size() == n  # traced in the caller's program, not ours

    # Gradients with respect to the parameters: nnx.grad of model(ids) = a finite difference.
    def loss(m):
        return m(ids)[:, -1, 3].sum()

    g = nnx.grad(loss)(llama)
    w = llama.blocks.mlp.down_kernel[...]  # [n_layers, d_mlp, d_model]: layer 1 is probed
    d = jnp.zeros_like(w).at[1].set(
        jnp.asarray(np.random.default_rng(0).standard_normal(w.shape[1:]), jnp.float32))
    eps = 1e-2
    up, dn = nnx.clone(llama), nnx.clone(llama)
    up.blocks.mlp.down_kernel[...] = w + eps * d
    dn.blocks.mlp.down_kernel[...] = w - eps * d
    fd = (float(loss(up)) - float(loss(dn))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g.blocks.mlp.down_kernel[...], d)), fd,
                               rtol=2e-2, atol=1e-4)


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    s = np.sqrt(((x - mu) ** 2).mean(-1) + eps)
    return (x - mu) / s[..., None] * w + b, s


def _rms_norm(x, w, eps):
    s = np.sqrt((x * x).mean(-1) + eps)
    return x / s[..., None] * w, s


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])
def test_norm_scales_and_mlp_sites_by_hand(arch, ids):
    model = _model(arch)
    cfg = model.config
    _, c = run_with_cache(model, ids)  # the default filter holds all of them
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731

    def norm(mod, x):
        if cfg.norm == "rms":
            return _rms_norm(x, f64(mod.scale[...]), cfg.norm_eps)
        return _layer_norm(x, f64(mod.scale[...]), f64(mod.bias[...]), cfg.norm_eps)

    for layer in range(cfg.n_layers):
        blk = model.block(layer)
        x = f64(c["resid_pre", layer])
        _, s1 = norm(blk.attn_norm, x)
        np.testing.assert_allclose(f64(c["ln1_scale", layer]), s1, rtol=1e-6)
        mlp_in = x if cfg.parallel_residual else f64(c["resid_mid", layer])
        normed, s2 = norm(blk.mlp_norm, mlp_in)
        np.testing.assert_allclose(f64(c["ln2_scale", layer]), s2, rtol=1e-6)
        act = ACTIVATIONS[cfg.act]
        up = normed @ f64(blk.mlp.up_kernel[...])
        if blk.mlp.up_bias is not None:
            up = up + f64(blk.mlp.up_bias[...])
        if blk.mlp.gate_kernel is not None:
            pre = normed @ f64(blk.mlp.gate_kernel[...])
            post = f64(act(jnp.asarray(pre))) * up
        else:
            pre = up
            post = f64(act(jnp.asarray(pre)))
        np.testing.assert_allclose(f64(c["mlp_pre", layer]), pre, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(f64(c["mlp_post", layer]), post, atol=2e-5, rtol=1e-5)
    _, sf = norm(model.final_norm, f64(c["resid_post", cfg.n_layers - 1]))
    np.testing.assert_allclose(f64(c["ln_final_scale"]), sf, rtol=1e-6)
    # Capturing them changed nothing (the norms divide as before when a hook only observes).
    new = ("ln1_scale", "ln2_scale", "mlp_pre", "mlp_post", "ln_final_scale")
    np.testing.assert_array_equal(np.asarray(run_with_cache(model, ids, names_filter=new)[0]),
                                  np.asarray(forward(model, ids)))

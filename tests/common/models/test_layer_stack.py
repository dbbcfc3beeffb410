"""The block stack: scanned forward = unrolled forward, runs of layers, captures out of the
scan, rematerialisation, per-layer views of the stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.hooks import SITES, Hooks
from common.interp import Intervention, forward, run_with_cache
from common.models import DecoderLM, ModelConfig, init_cache
from common.models.capture import CaptureHooks
from common.models.layer_stack import REMAT_POLICIES, layer_runs

BASE = dict(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_mlp=48,
            max_position=32)
ARCHS = {"llama": dict(),
         "gpt2": dict(arch="gpt2", norm="layer", act="gelu_tanh", gated_mlp=False, pos="learned",
                      qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True,
                      n_kv_heads=4),
         "neox": dict(arch="neox", norm="layer", act="gelu", gated_mlp=False, rotary_dim=4,
                      parallel_residual=True, qkv_bias=True, o_bias=True, mlp_bias=True,
                      n_kv_heads=4)}


def _pair(arch: str, **kw) -> tuple[DecoderLM, DecoderLM]:
    """The same weights, scanned and unrolled."""
    cfg = ModelConfig(**{**BASE, **ARCHS[arch], **kw})
    scanned = DecoderLM(cfg, rngs=nnx.Rngs(3))
    unrolled = DecoderLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))
    nnx.update(unrolled, nnx.state(scanned))
    return scanned, unrolled


IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)


@pytest.mark.parametrize("arch", ["llama", pytest.param("gpt2", marks=pytest.mark.slow),
                                  pytest.param("neox", marks=pytest.mark.slow)])
def test_scanned_forward_equals_unrolled(arch):
    scanned, unrolled = _pair(arch)
    a, ca = run_with_cache(scanned, IDS, names_filter=SITES)
    b, cb = run_with_cache(unrolled, IDS, names_filter=SITES)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
    assert set(ca) == set(cb)
    for key in ca:
        np.testing.assert_allclose(np.asarray(ca[key]), np.asarray(cb[key]), atol=2e-5,
                                   rtol=1e-5, err_msg=str(key))
    # KV-cached prefill and one decode step.
    for model in (scanned, unrolled):
        cache = init_cache(model.config, 2, 12)
        _, cache = model.forward(IDS[:, :8], cache=cache)
        step, _ = model.forward(IDS[:, 8:], cache=cache)
        np.testing.assert_allclose(np.asarray(step[:, -1]), np.asarray(a[:, -1]), atol=2e-5,
                                   rtol=1e-5)


def _n_eqns(model: DecoderLM) -> int:
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda st, ids: nnx.merge(graphdef, st).forward(ids)[0])(state, IDS)
    return len(jaxpr.jaxpr.eqns)


def test_the_program_does_not_grow_with_depth():
    sizes = {(scan, n): _n_eqns(DecoderLM(ModelConfig(**{**BASE, "n_layers": n},
                                                      scan_layers=scan), rngs=nnx.Rngs(0)))
             for scan in (True, False) for n in (2, 8)}
    assert sizes[(True, 2)] == sizes[(True, 8)]
    assert sizes[(False, 8)] > 3 * sizes[(False, 2)] / 2  # unrolled: one copy per layer


def test_runs_split_only_where_the_program_changes():
    model = DecoderLM(ModelConfig(**{**BASE, "n_layers": 6}), rngs=nnx.Rngs(0))
    cfg = model.config

    def runs(hooks):
        return layer_runs(hooks, 0, 6, scan=True)

    assert runs(Hooks()) == [(0, 6)]
    # A capture of always-computed sites at a few layers: one scan (kept values picked out).
    assert runs(CaptureHooks({"z", "resid_post"}, (1, 4))) == [(0, 6)]
    # The pattern is computed only where it is captured: its layers run their own program.
    assert runs(CaptureHooks({"pattern"}, (2, 3))) == [(0, 2), (2, 4), (4, 6)]
    iv = Intervention(prob_transform=lambda p, params, layer: p, edit_layers=(5,))
    assert runs(iv.hooks(cfg)) == [(0, 5), (5, 6)]
    assert runs(Intervention.ablate(cfg, [(3, 1)]).hooks(cfg)) == [(0, 6)]
    assert layer_runs(Hooks(), 1, 4, scan=False) == [(1, 2), (2, 3), (3, 4)]


def test_a_capture_at_some_layers_is_the_full_capture_there():
    model = DecoderLM(ModelConfig(**{**BASE, "n_layers": 5}), rngs=nnx.Rngs(1))
    _, full = run_with_cache(model, IDS, names_filter=("z", "pattern", "resid_post"))
    logits, some = run_with_cache(model, IDS, names_filter=("z", "pattern", "resid_post"),
                                  layers=[1, 3])
    assert set(some) == {(s, i) for s in ("z", "pattern", "resid_post") for i in (1, 3)}
    for key in some:
        np.testing.assert_array_equal(np.asarray(some[key]), np.asarray(full[key]))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(model, IDS)))


def test_hooks_that_need_python_ints_run_unrolled():
    model, _ = _pair("llama")
    seen = []

    class Double(Hooks):  # does not opt in to scanning: layer is a Python int
        def site(self, site, layer, value):
            seen.append(layer)
            return 2 * value if (site, layer) == ("z", 2) else value

    got = model.forward(IDS, hooks=Double())[0]
    assert seen and all(type(layer) is int for layer in seen)
    gate = np.ones((4, 4), np.float32)
    gate[2] = 2.0
    want = forward(model, IDS, intervention=Intervention(gate=jnp.asarray(gate)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("remat", ["full", pytest.param("save_dots", marks=pytest.mark.slow),
                                   pytest.param("save_dots_no_batch", marks=pytest.mark.slow)])
def test_remat_changes_no_gradient(remat):
    plain, _ = _pair("llama")
    other = DecoderLM(plain.config.replace(remat=remat), rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(plain))

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(IDS))[..., 5])

    gp, go = nnx.grad(loss)(plain), nnx.grad(loss)(other)
    for a, b in zip(jax.tree.leaves(nnx.state(gp)), jax.tree.leaves(nnx.state(go)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    assert "nothing_saveable" in REMAT_POLICIES and "none" in REMAT_POLICIES


def test_remat_in_the_program():
    """``full`` puts the layer step under a checkpoint (remat) in the scanned program."""
    model = DecoderLM(ModelConfig(**BASE, remat="full"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    text = str(jax.make_jaxpr(jax.grad(
        lambda st: nnx.merge(graphdef, st).forward(IDS)[0].sum()))(state))
    assert "remat" in text or "checkpoint" in text
    with pytest.raises(ValueError, match="unknown policy 'most'"):
        ModelConfig(**BASE, remat="most")


def test_block_views_and_weight_edits():
    model, _ = _pair("llama")
    blk = model.block(-1)
    np.testing.assert_array_equal(np.asarray(blk.attn.q_kernel[...]),
                                  np.asarray(model.blocks.attn.q_kernel[...][3]))
    before = np.asarray(forward(model, IDS))
    blk.attn.o_kernel[...] = jnp.zeros_like(blk.attn.o_kernel[...])
    np.testing.assert_array_equal(np.asarray(forward(model, IDS)), before)  # a copy
    model.set_block(3, blk)
    assert not np.asarray(model.blocks.attn.o_kernel[...][3]).any()
    ablated = Intervention.ablate(model.config, [(3, h) for h in range(4)])
    _, orig = _pair("llama")
    np.testing.assert_allclose(np.asarray(forward(model, IDS)),
                               np.asarray(forward(orig, IDS, intervention=ablated)), atol=1e-5)
    with pytest.raises(IndexError, match="layer 4 out of range"):
        model.block(4)

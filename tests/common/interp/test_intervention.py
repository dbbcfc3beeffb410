"""Interventions as data, each against a brute-force edit of the weights or a closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.hooks import SITE_TABLE, Hooks
from common.attention.masks import Mask
from common.interp import Intervention, Patch, forward, run_with_cache
from common.models.capture import _capture_jit
from tests.common.interp.conftest import ALL_SITES, TINY, make_model

L, H, KV, D = TINY.n_layers, TINY.n_heads, TINY.n_kv_heads, TINY.d_head
G = H // KV


def _with_weights(model, edit):
    """A copy of ``model`` whose attention params went through ``edit(layer, attn)``."""
    m = nnx.clone(model)
    for layer in range(L):
        blk = m.block(layer)
        edit(layer, blk.attn)
        m.set_block(layer, blk)
    return m


def _np(x):
    return np.asarray(x, np.float64)


def test_empty_intervention_is_the_plain_forward_bit_for_bit(tiny, ids):
    plain = np.asarray(forward(tiny, ids))
    np.testing.assert_array_equal(np.asarray(forward(tiny, ids, intervention=Intervention())),
                                  plain)
    # Eager too: the traced program is the plain one, equation for equation.
    plain_jaxpr = jax.make_jaxpr(lambda x: tiny(x))(ids)
    empty_jaxpr = jax.make_jaxpr(lambda x: tiny(x, intervention=Intervention()))(ids)
    assert str(empty_jaxpr) == str(plain_jaxpr)
    assert Intervention().is_empty() and not Intervention.ablate(TINY, [(0, 0)]).is_empty()


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_gate_equals_scaling_rows_of_W_O(tiny, ids, scale):
    heads = [(0, 1), (1, 3)]

    def edit(layer, attn):
        w = attn.o_kernel[...]
        for lh, h in heads:
            if lh == layer:
                w = w.at[h].multiply(scale)
        attn.o_kernel[...] = w

    want = _np(forward(_with_weights(tiny, edit), ids))
    got = _np(forward(tiny, ids, intervention=Intervention.ablate(TINY, heads, scale=scale)))
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert np.abs(got - _np(forward(tiny, ids))).max() > 1e-3  # the edit matters


def test_offset_on_all_positions_equals_an_output_bias():
    """Adding b to head h's z everywhere adds b @ W_O[h] to the attention output bias."""
    model = make_model(TINY.replace(o_bias=True), seed=4)
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % TINY.vocab_size
    offset = jnp.asarray(np.random.default_rng(2).standard_normal((L, H, D)), jnp.float32)
    offset = offset * jnp.asarray([[1, 0, 0, 1], [0, 1, 0, 0]], jnp.float32)[:, :, None]

    def edit(layer, attn):
        attn.o_bias[...] = attn.o_bias[...] + jnp.einsum("hk,hkd->d", offset[layer],
                                                           attn.o_kernel[...])

    want = _np(forward(_with_weights(model, edit), ids))
    got = _np(forward(model, ids, intervention=Intervention(offset=offset)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_mean_ablation_over_batch_and_pos_equals_weight_edit(tiny, ids, corrupted):
    """z_h := mean(z_h) (a constant) is zeroing W_O[h] and adding mean @ W_O[h] to a bias."""
    model = make_model(TINY.replace(o_bias=True), seed=5)
    _, ref = run_with_cache(model, corrupted, names_filter="z")
    iv = Intervention.mean_ablate(TINY, [(1, 2)], ref, over=("batch", "pos"))
    mean = _np(ref["z", 1]).mean(axis=(0, 1))[2]  # [d_head]

    def edit(layer, attn):
        if layer == 1:
            wo = attn.o_kernel[...]
            attn.o_bias[...] = attn.o_bias[...] + jnp.asarray(mean, jnp.float32) @ wo[2]
            attn.o_kernel[...] = wo.at[2].set(0.0)

    want = _np(forward(_with_weights(model, edit), ids))
    np.testing.assert_allclose(_np(forward(model, ids, intervention=iv)), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ALL_SITES)
def test_patching_a_site_with_its_own_value_changes_nothing(tiny, ids, full_cache, site):
    logits, cache = full_cache
    if site in ("k", "v", "rot_k"):
        heads = [(0, 1), (1, 0)]
    elif site in ("q", "rot_q", "attn_scores", "pattern", "z", "head_out"):
        heads = [(0, 2), (1, 3)]
    else:
        heads = None
    final = SITE_TABLE[site].final  # ln_final_scale: its one layer, n_layers
    iv = Intervention.patch(TINY, cache, site, heads=heads,
                            layers=None if heads or final else [0, 1])
    assert tuple(iv.patches[0].layers) == ((TINY.n_layers,) if final else (0, 1))
    np.testing.assert_allclose(_np(forward(tiny, ids, intervention=iv)), _np(logits),
                               atol=2e-6, rtol=0)


def _z_after(model, ids, iv, layer):
    return _np(run_with_cache(model, ids, names_filter="z", layers=layer, intervention=iv)[1][
        "z", layer])


def test_gqa_patching_a_query_head_touches_only_that_head(tiny, ids, corrupted):
    """TransformerLens #980: patching query head h must not leak into its group mates."""
    _, src = run_with_cache(tiny, corrupted, names_filter=("q", "z"))
    base = _z_after(tiny, ids, None, 1)
    for site in ("q", "z"):
        iv = Intervention.patch(TINY, src, site, heads=[(1, 3)])
        z = _z_after(tiny, ids, iv, 1)
        changed = np.abs(z - base).max(axis=(0, 1, 3)) > 1e-6
        assert changed.tolist() == [False, False, False, True], (site, changed)


@pytest.mark.parametrize("site", ["k", "v"])
def test_gqa_patching_a_kv_head_affects_exactly_its_group(tiny, ids, corrupted, site):
    _, src = run_with_cache(tiny, corrupted, names_filter=site)
    base = _z_after(tiny, ids, None, 1)
    for kv in range(KV):
        iv = Intervention.patch(TINY, src, site, heads=[(1, kv)])
        z = _z_after(tiny, ids, iv, 1)
        changed = np.abs(z - base).max(axis=(0, 1, 3)) > 1e-6
        assert changed.tolist() == [kv == h // G for h in range(H)], (site, kv, changed)


def test_patch_positions_only(tiny, ids, corrupted):
    """A (layer, head, position) patch changes z there and at no other position of the layer."""
    _, src = run_with_cache(tiny, corrupted, names_filter="v")
    iv = Intervention.patch(TINY, src, "v", heads=[(0, 1)], positions=[3])
    z = _z_after(tiny, ids, iv, 0)
    base = _z_after(tiny, ids, None, 0)
    diff = np.abs(z - base).max(axis=(0, 3))  # [pos, head]
    # Causal: only queries >= 3 read key 3; only the group of kv head 1 (heads 2, 3) reads it.
    assert (diff[:3] == 0).all() and (diff[:, :2] == 0).all() and (diff[3:, 2:] > 1e-6).all()


def test_soft_injection_a_one_is_a_replacement_and_learns(tiny, ids):
    v = jnp.asarray(np.random.default_rng(3).standard_normal((L, H, D)), jnp.float32)
    where = jnp.zeros((1, ids.shape[1])).at[0, -1].set(1.0)  # last position only
    a = jnp.zeros((L, H)).at[1, 2].set(1.0)
    z = _z_after(tiny, ids, Intervention(mix_a=a, mix_v=v, mix_where=where), 1)
    base = _z_after(tiny, ids, None, 1)
    np.testing.assert_allclose(z[:, -1, 2], np.broadcast_to(_np(v[1, 2]), (2, D)), atol=1e-6)
    z[:, -1, 2] = base[:, -1, 2]
    np.testing.assert_array_equal(z, base)

    # Differentiable in a: the gradient matches a central finite difference.
    def loss(a):
        iv = Intervention(mix_a=a, mix_v=v, mix_where=where)
        return tiny(ids, intervention=iv)[:, -1, 5].sum()

    a0 = jnp.full((L, H), 0.3)
    g = jax.jit(jax.grad(loss))(a0)
    loss = jax.jit(loss)
    eps = 1e-2
    for lh in [(0, 1), (1, 2)]:
        up, dn = loss(a0.at[lh].add(eps)), loss(a0.at[lh].add(-eps))
        np.testing.assert_allclose(float(g[lh]), float(up - dn) / (2 * eps), rtol=2e-2, atol=1e-4)


def test_values_do_not_retrace(tiny, ids):
    def iv(scale):
        return Intervention(gate=jnp.full((L, H), scale), offset=jnp.zeros((L, H, D)) + scale)

    forward(tiny, ids, intervention=iv(0.5))
    n = _capture_jit._cache_size()
    out = [forward(tiny, ids, intervention=iv(s)) for s in (0.1, 0.9, 2.0)]
    assert _capture_jit._cache_size() == n
    assert np.abs(_np(out[0]) - _np(out[1])).max() > 1e-3


def test_prob_transform_on_chosen_heads(tiny, ids):
    """Sending head (0, 1)'s attention entirely to position 0 makes its z the value of token 0."""

    def to_first(p, params, layer):  # noqa: ARG001
        return jnp.zeros_like(p).at[..., 0].set(params)

    heads = jnp.zeros((L, H), bool).at[0, 1].set(True)
    iv = Intervention(prob_transform=to_first, prob_heads=heads, prob_params=jnp.float32(1.0),
                      edit_layers=(0,))
    _, c = run_with_cache(tiny, ids, names_filter=("v", "z", "pattern"), layers=0, intervention=iv)
    _, base = run_with_cache(tiny, ids, names_filter=("z",), layers=0)
    v0 = _np(c["v", 0])[:, 0, 1 // G]  # [b, d]: kv head of query head 1
    np.testing.assert_allclose(_np(c["z", 0])[:, :, 1], np.repeat(v0[:, None], ids.shape[1], 1),
                               atol=1e-6)
    others = [0, 2, 3]
    np.testing.assert_allclose(_np(c["z", 0])[:, :, others], _np(base["z", 0])[:, :, others],
                               atol=2e-6)
    assert (_np(c["pattern", 0])[:, 1, :, 0] == 1).all()


def test_rope_positions_shift_invariance_and_mask(tiny, ids):
    """RoPE scores depend on relative positions only: shifting every position id (shared or
    per head) leaves the logits unchanged; a mask in the intervention equals the forward's."""
    plain = _np(forward(tiny, ids))
    b, s = ids.shape
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32) + 17, (b, s))
    iv = Intervention(q_positions=pos, kv_positions=pos)
    np.testing.assert_allclose(_np(forward(tiny, ids, intervention=iv)), plain, atol=2e-5)
    per_head = jnp.broadcast_to(pos[:, None], (b, H, s))
    per_kv = jnp.broadcast_to(pos[:, None], (b, KV, s))
    iv = Intervention(q_positions=per_head, kv_positions=per_kv)
    np.testing.assert_allclose(_np(forward(tiny, ids, intervention=iv)), plain, atol=2e-5)
    # Different position ids per head do change things.
    iv = Intervention(q_positions=per_head.at[:, 0].set(0), kv_positions=per_kv)
    assert np.abs(_np(forward(tiny, ids, intervention=iv)) - plain).max() > 1e-4
    dense = jnp.tril(jnp.ones((s, s), bool)).at[:, 0].set(False).at[0, 0].set(True)
    mask = Mask(causal=True, dense=dense[None, None])
    want = _np(forward(tiny, ids, mask=mask))
    np.testing.assert_allclose(_np(forward(tiny, ids, intervention=Intervention(mask=mask))),
                               want, atol=2e-6)


def test_merge_composes(tiny, ids):
    a = Intervention.ablate(TINY, [(0, 1)])
    b = Intervention.ablate(TINY, [(1, 2)], scale=0.5)
    both = a.merge(b)
    np.testing.assert_array_equal(np.asarray(both.gate), np.asarray(a.gate * b.gate))
    with pytest.raises(ValueError, match="field 'mix_a' is set in both"):
        Intervention(mix_a=jnp.ones((L, H)), mix_v=jnp.ones((L, H, D))).merge(
            Intervention(mix_a=jnp.ones((L, H)), mix_v=jnp.ones((L, H, D))))


def test_bad_input_names_the_field(tiny, ids, full_cache):
    cache = full_cache[1]
    with pytest.raises(ValueError, match=r"Intervention.gate: expected shape \[n_layers, n_heads\]"
                                         r" = \(2, 4\), got \(2, 3\)"):
        forward(tiny, ids, intervention=Intervention(gate=jnp.ones((L, 3))))
    with pytest.raises(ValueError, match=r"Intervention.heads: head 4 out of range \[0, 4\)"):
        Intervention.ablate(TINY, [(0, 4)])
    with pytest.raises(ValueError, match=r"Intervention.patch heads: head 2 out of range \[0, 2\)"):
        Intervention.patch(TINY, cache, "v", heads=[(0, 2)])  # only 2 kv heads
    with pytest.raises(ValueError, match=r"Intervention.patch: unknown site 'hook_z'"):
        Intervention.patch(TINY, cache, "hook_z", heads=[(0, 0)])
    bad = Patch(site="zz", layers=(0,), value=jnp.zeros((1, 2, 6, 4, 8)))
    with pytest.raises(ValueError, match=r"Intervention.patches\[0\].site: unknown site 'zz'"):
        forward(tiny, ids, intervention=Intervention(patches=(bad,)))
    bad = Patch(site="z", layers=(0,), value=jnp.zeros((1, 2, 6, 4, 9)))
    with pytest.raises(ValueError, match=r"Intervention.patches\[0\].value: a layer's value "
                                         r"\(2, 6, 4, 9\) does not fit site 'z'"):
        forward(tiny, ids, intervention=Intervention(patches=(bad,)))
    bad = Patch(site="z", layers=(5,), value=jnp.zeros((1, 2, 6, 4, 8)))
    with pytest.raises(ValueError, match=r"patches\[0\].layers: layer 5 out of range"):
        forward(tiny, ids, intervention=Intervention(patches=(bad,)))
    with pytest.raises(ValueError, match=r"Intervention.mix_v: expected shape"):
        forward(tiny, ids, intervention=Intervention(mix_a=jnp.ones((L, H)),
                                                     mix_v=jnp.ones((L, H))))
    with pytest.raises(ValueError, match=r"Intervention.q_positions: expected shape"):
        forward(tiny, ids, intervention=Intervention(q_positions=jnp.zeros((2, 3, 6), int)))
    with pytest.raises(ValueError, match=r"position mask of length 5 for a sequence of 6"):
        forward(tiny, ids, intervention=Intervention(offset=jnp.ones((L, H, D)),
                                                     offset_where=jnp.ones((1, 5))))


def test_a_loop_of_single_head_patches_compiles_once(tiny, ids, corrupted, monkeypatch):
    """Issue 12 item 5: which layer a patch edits is data, so a Python loop over every (layer,
    head) runs one compiled program; each run equals a hand-written hook that replaces that
    one head's z (run eagerly, no Intervention involved)."""
    _, src = run_with_cache(tiny, corrupted, names_filter="z")
    forward(tiny, ids, intervention=Intervention.patch(TINY, src, "z", heads=[(0, 0)]))
    n = _capture_jit._cache_size()

    class ReplaceOneHead(Hooks):
        def __init__(self, layer, head):
            self.layer, self.head = layer, head

        def site(self, site, layer, value):
            if site == "z" and layer == self.layer:
                return value.at[:, :, self.head].set(src["z", layer][:, :, self.head])
            return value

    for layer in range(L):
        for head in range(H):
            iv = Intervention.patch(TINY, src, "z", heads=[(layer, head)])
            got = _np(forward(tiny, ids, intervention=iv))
            want = _np(tiny(ids, intervention=ReplaceOneHead(layer, head)))
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            # Outside jit the layers are known and selected in Python: the same numbers.
            eager = run_with_cache(tiny, ids, names_filter=(), intervention=iv, jit=False)[0]
            np.testing.assert_allclose(got, _np(eager), atol=1e-5, rtol=0)
    assert _capture_jit._cache_size() == n
    # Several layers in one patch, in any order: value[i] goes to layers[i].
    both = Patch(site="z", layers=np.asarray([1, 0], np.int32),
                 value=jnp.stack([src["z", 1], src["z", 0]]))
    whole = Intervention.patch(TINY, src, "z", layers=[0, 1])
    np.testing.assert_array_equal(_np(forward(tiny, ids, intervention=Intervention(patches=(both,)))),
                                  _np(forward(tiny, ids, intervention=whole)))
    with pytest.raises(ValueError, match=r"patches\[0\].layers: repeated layer"):
        forward(tiny, ids, intervention=Intervention(patches=(both.replace(
            layers=np.asarray([1, 1], np.int32)),)))
    # Optional sites change the program where they are computed: their layers stay static.
    _, full = run_with_cache(tiny, corrupted, names_filter=("pattern", "attn_scores", "z"))
    for site in ("pattern", "attn_scores"):
        assert Intervention.patch(TINY, full, site, heads=[(1, 0)]).patches[0].static_layers == (1,)
    assert Intervention.patch(TINY, full, "z", heads=[(1, 0)]).patches[0].static_layers is None

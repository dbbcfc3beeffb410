"""Flash kernels (interpret mode on CPU) against an independent f32 einsum reference.

Each case checks the forward output, the logsumexp and the gradients w.r.t. q, k, v and the
per-head scale (through a loss that also uses the lse) in one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.attention.masks import Mask, PineMask
from common.attention.pallas import BlockSizes, flash_attention, recompute_pattern
from tests.common.attention.pallas.helpers import brute_force_mask, compiled, reference


def _inputs(seed, b, sq, skv, h, kvh, d, dtype):
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = jax.random.normal(ks[0], (b, sq, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, skv, kvh, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, skv, kvh, d), jnp.float32).astype(dtype)
    co = jax.random.normal(ks[3], (b, sq, h, d), jnp.float32)
    cl = jax.random.normal(ks[4], (b, h, sq), jnp.float32)
    scale = d**-0.5 * (1.0 + 0.5 * jax.random.uniform(ks[5], (h,)))  # distinct per head
    return q, k, v, co, cl, scale


def _loss_and_grads(attn, q, k, v, scale, co, cl):
    def loss(q, k, v, scale):
        out, lse = attn(q, k, v, scale)
        finite = jnp.where(jnp.isfinite(lse), lse, 0.0)
        return jnp.sum(out.astype(jnp.float32) * co) + jnp.sum(finite * cl), (out, lse)

    (_, (out, lse)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
        q, k, v, scale)
    return out, lse, grads


def _check(mask, allowed, *, b, sq, skv, h, kvh, d, blocks, dtype=jnp.float32, softcap=None,
           seed=0, rtol=None, atol=None):
    q, k, v, co, cl, scale = _inputs(seed, b, sq, skv, h, kvh, d, dtype)

    def kern(q, k, v, scale):
        return flash_attention(q, k, v, mask=mask, scale=scale, softcap=softcap,
                               block_sizes=blocks, return_lse=True)

    def ref(q, k, v, scale):
        return reference(q, k, v, allowed, scale, softcap)

    out, lse, grads = compiled(lambda *a: _loss_and_grads(kern, *a), q, k, v, scale, co, cl)
    r_out, r_lse, r_grads = jax.jit(lambda *a: _loss_and_grads(ref, *a))(q, k, v, scale, co, cl)
    f32 = dtype == jnp.float32
    rtol = rtol if rtol is not None else (2e-5 if f32 else 2e-2)
    atol = atol if atol is not None else (2e-5 if f32 else 2e-2)
    assert out.dtype == dtype and out.shape == (b, sq, h, d)
    np.testing.assert_allclose(np.asarray(out, np.float32), r_out, rtol=rtol, atol=atol)
    np.testing.assert_allclose(lse, r_lse, rtol=rtol, atol=atol)
    # Gradients are sums over up to kv_len terms: scale the tolerance with the gradient size.
    for name, g, rg in zip(("dq", "dk", "dv", "dscale"), grads, r_grads, strict=True):
        g, rg = np.asarray(g, np.float32), np.asarray(rg, np.float32)
        tol = 10 * atol * max(1.0, float(np.abs(rg).max()))
        np.testing.assert_allclose(g, rg, rtol=10 * rtol, atol=tol, err_msg=name)
    return out, lse


def _segments(rng, b, n, n_seg):
    """Random packed-sequence ids ``[b, n]`` (sorted, contiguous runs)."""
    cuts = np.sort(rng.integers(1, n, size=(b, n_seg - 1)), axis=1)
    return np.stack([np.searchsorted(c, np.arange(n), side="right") for c in cuts]).astype(
        np.int32)


CASES = {
    # name: (b, sq, skv, h, kvh, d, block_q, block_kv)
    "causal_odd_gqa2": (2, 37, 37, 4, 2, 16, 16, 16),
    "causal_cache_mqa": (1, 13, 45, 3, 1, 8, 8, 16),
    "full_odd_mha": (1, 21, 33, 2, 2, 8, 16, 8),
}


@pytest.mark.parametrize(
    "name", [n if n != "full_odd_mha" else pytest.param(n, marks=pytest.mark.slow)
             for n in sorted(CASES)])
def test_causal_and_full(name):
    b, sq, skv, h, kvh, d, bq, bk = CASES[name]
    causal = name.startswith("causal")
    mask = Mask(causal=True) if causal else None
    allowed = brute_force_mask(b, sq, skv, causal=causal)
    _check(mask, allowed, b=b, sq=sq, skv=skv, h=h, kvh=kvh, d=d, blocks=BlockSizes(bq, bk))


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_padding_and_segments(causal):
    """Packed sequences plus right padding, GQA 4:1, odd length, causal on/off."""
    rng = np.random.default_rng(1 + causal)
    b, n, h, kvh, d = 2, 43, 4, 1, 8
    seg = _segments(rng, b, n, 3)
    lengths = np.array([n, 29])
    valid = np.arange(n)[None] < lengths[:, None]
    mask = Mask(causal=causal, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg),
                kv_valid=jnp.asarray(valid))
    allowed = brute_force_mask(b, n, n, causal=causal, q_seg=seg, kv_seg=seg, kv_valid=valid)
    _check(mask, allowed, b=b, sq=n, skv=n, h=h, kvh=kvh, d=d, blocks=BlockSizes(16, 8))


def test_left_padding_positions_and_softcap():
    """Order positions given explicitly (left padding: fully masked rows), softcap."""
    b, n, h, kvh, d = 2, 24, 2, 1, 16
    pad = np.array([0, 5])
    pos = np.maximum(np.arange(n)[None] - pad[:, None], -1).astype(np.int32)
    valid = pos >= 0
    mask = Mask(causal=True, q_positions=jnp.asarray(pos), kv_positions=jnp.asarray(pos),
                kv_valid=jnp.asarray(valid))
    allowed = brute_force_mask(b, n, n, causal=True, q_pos=pos, kv_pos=pos, kv_valid=valid)
    out, lse = _check(mask, allowed, b=b, sq=n, skv=n, h=h, kvh=kvh, d=d, softcap=5.0,
                      blocks=BlockSizes(8, 8))
    # Padded query rows see nothing: zero output and lse = -inf (not NaN).
    assert np.all(np.asarray(out[1, :5]) == 0) and np.all(np.isneginf(np.asarray(lse[1, :, :5])))


def _pine_layout(b, prefix, seg_lens, suffix):
    ids = [0] * prefix
    for i, L in enumerate(seg_lens):
        ids += [i + 1] * L
    ids += [0] * suffix
    return np.broadcast_to(np.asarray(ids, np.int32), (b, len(ids)))


def test_pine_block_sparse():
    """PINE: bidirectional between segments, causal within; prefix/suffix causal; GQA 2:1."""
    b, h, kvh, d = 1, 2, 1, 8
    doc = _pine_layout(b, 5, [11, 16, 9], 6)
    n = doc.shape[1]
    mask = PineMask(causal=True, doc_ids=jnp.asarray(doc))
    allowed = brute_force_mask(b, n, n, causal=True, doc=doc)
    np.testing.assert_array_equal(np.asarray(mask.materialize(b, n, n)), allowed)
    _, lse = _check(mask, allowed, b=b, sq=n, skv=n, h=h, kvh=kvh, d=d, blocks=BlockSizes(8, 8))
    # The kernel's lse recovers head 1's exact pattern (probabilities of the brute-force mask).
    q, k, _, _, _, scale = _inputs(0, b, n, n, h, kvh, d, jnp.float32)
    pat = recompute_pattern(q, k, lse, [1], mask=mask, scale=scale)
    logits = np.einsum("bqd,bkd->bqk", q[:, :, 1], k[:, :, 0]) * float(scale[1])
    want = np.where(allowed[:, 0], np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(pat[:, 0], want, rtol=1e-5, atol=1e-6)


def test_dense_per_head_mask_bf16():
    """A per-head dense mask ANDed with causal, bf16 inputs (f32 reference on the same)."""
    b, n, h, kvh, d = 1, 40, 2, 2, 16
    rng = np.random.default_rng(3)
    dense = rng.random((1, h, n, n)) < 0.6
    dense[:, 1, :16, :] = False  # whole blocks empty for head 1
    mask = Mask(causal=True, dense=jnp.asarray(dense))
    allowed = brute_force_mask(b, n, n, causal=True, dense=dense)
    _check(mask, allowed, b=b, sq=n, skv=n, h=h, kvh=kvh, d=d, dtype=jnp.bfloat16,
           blocks=BlockSizes(16, 16))


def test_block_sizes_validation():
    with pytest.raises(ValueError, match="block_kv"):
        BlockSizes(128, 100)
    with pytest.raises(ValueError, match="block_q"):
        BlockSizes(0, 128)
    with pytest.raises(ValueError, match="TPU"):
        BlockSizes(128, 64).validate_for("tpu")
    assert BlockSizes.default("tpu").dkv == (256, 256)
    assert BlockSizes.default("gpu").fwd == (128, 64)


def test_bad_shapes_name_the_problem():
    q = jnp.zeros((1, 8, 3, 8))
    k = jnp.zeros((1, 8, 2, 8))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        flash_attention(q, k, k)
    with pytest.raises(ValueError, match=r"scale must be \[3\]"):
        flash_attention(q, q, q, scale=jnp.ones(2))

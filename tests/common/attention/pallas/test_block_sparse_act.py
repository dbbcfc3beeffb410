"""Block-sparse mask description, block skipping, race detection and the fused ACT variant."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from common.attention.masks import Mask, PineMask
from common.attention.pallas import (
    BlockSizes,
    block_states,
    flash_attention,
    interpret_mode,
    mask_operands,
)
from common.attention.pallas.block_mask import EMPTY, FULL, PARTIAL
from tests.common.attention.pallas.helpers import brute_force_mask, compiled, reference


def _brute_states(allowed: np.ndarray, bq: int, bk: int, q_pad: int, kv_pad: int) -> np.ndarray:
    b, hm, sq, skv = allowed.shape
    a = np.zeros((b, hm, q_pad, kv_pad), bool)
    a[:, :, :sq, :skv] = allowed
    a = a.reshape(b, hm, q_pad // bq, bq, kv_pad // bk, bk)
    # Padded query rows carry no constraint of their own: judge blocks by their real rows.
    rows = np.zeros((q_pad,), bool)
    rows[:sq] = True
    rows = rows.reshape(q_pad // bq, bq)[None, None, :, :, None, None]
    any_ = (a & rows).any(axis=(3, 5))
    all_ = (a | ~rows).all(axis=(3, 5))
    return np.where(any_, np.where(all_, FULL, PARTIAL), EMPTY)


@pytest.mark.parametrize(
    "seed", [0, 1, 2] + [pytest.param(s, marks=pytest.mark.slow) for s in (3, 4, 5)])
def test_block_states_are_conservative_and_tight(seed):
    """States from per-block summaries vs the brute-force pattern: never skip a visible pair,
    never drop the mask from a block with a hidden pair; exact for structured layouts."""
    rng = np.random.default_rng(seed)
    b, n, bq, bk = 2, int(rng.integers(20, 60)), 8, 16
    q_pad, kv_pad = -(-n // bq) * bq, -(-n // bk) * bk
    kind = seed % 3
    if kind == 0:  # packed segments + padding, causal
        seg = np.sort(rng.integers(0, 3, size=(b, n)), axis=1).astype(np.int32)
        valid = np.arange(n)[None] < rng.integers(n // 2, n + 1, size=(b, 1))
        mask = Mask(causal=True, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg),
                    kv_valid=jnp.asarray(valid))
        allowed = brute_force_mask(b, n, n, causal=True, q_seg=seg, kv_seg=seg, kv_valid=valid)
    elif kind == 1:  # PINE
        doc = np.zeros((b, n), np.int32)
        cuts = np.sort(rng.choice(np.arange(2, n - 2), size=4, replace=False))
        for i in range(3):
            doc[:, cuts[i]:cuts[i + 1]] = i + 1
        mask = PineMask(causal=True, doc_ids=jnp.asarray(doc))
        allowed = brute_force_mask(b, n, n, causal=True, doc=doc)
    else:  # dense per head
        dense = rng.random((1, 2, n, n)) < 0.3
        dense[:, :, : n // 2, n // 2:] = False
        mask = Mask(dense=jnp.asarray(dense))
        allowed = brute_force_mask(b, n, n, dense=dense)
    st = np.asarray(block_states(mask_operands(mask, b, n, n, q_pad, kv_pad), bq, bk))
    want = _brute_states(allowed, bq, bk, q_pad, kv_pad)
    st = np.broadcast_to(st, want.shape)
    assert not np.any((st == EMPTY) & (want != EMPTY)), "a block with visible pairs is skipped"
    assert not np.any((st == FULL) & (want != FULL)), "a block with hidden pairs is unmasked"
    if kind != 1:  # min/max summaries are exact for monotone segments and dense masks
        np.testing.assert_array_equal(st, want)
    else:
        assert np.mean(st == want) > 0.8


def test_empty_blocks_are_not_read():
    """K/V tiles that no query may see are skipped: NaNs there reach neither out nor grads."""
    b, n, h, d = 1, 32, 2, 8
    valid = np.arange(n)[None] < 16  # kv blocks 2 and 3 (of 8) are padding
    mask = Mask(causal=False, kv_valid=jnp.asarray(valid))
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (b, n, h, d))
    k = jax.random.normal(ks[1], (b, n, 1, d)).at[:, 16:].set(jnp.nan)
    v = jax.random.normal(ks[2], (b, n, 1, d)).at[:, 16:].set(jnp.nan)

    def f(q, k, v):
        return flash_attention(q, k, v, mask=mask, block_sizes=BlockSizes(8, 8))

    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(jnp.ones_like(out))

    out, (dq, dk, dv) = compiled(fwd_bwd, q, k, v)
    ref, _ = reference(q, k[:, :16], v[:, :16], np.ones((1, 1, n, 16), bool), jnp.full(h, d**-0.5))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
    assert np.isfinite(np.asarray(dq)).all()
    assert np.all(np.asarray(dk[:, 16:]) == 0) and np.all(np.asarray(dv[:, 16:]) == 0)


def test_pine_skips_blocks():
    """The PINE layout has empty blocks (suffix keys for segment queries) that are skipped."""
    doc = np.array([[0] * 8 + [1] * 16 + [2] * 16 + [0] * 24], np.int32)
    n = doc.shape[1]
    st = np.asarray(block_states(mask_operands(PineMask(causal=True, doc_ids=jnp.asarray(doc)),
                                               1, n, n, n, n), 8, 8))
    assert (st == EMPTY).sum() > 0 and (st == FULL).sum() > 0
    # segment 1 queries (block 1) see all of segment 2 (blocks 3, 4) bidirectionally
    assert st[0, 0, 1, 3] == FULL and st[0, 0, 1, 4] == FULL


def test_race_detection_forward_backward():
    """TPU interpret mode with race detection over the three kernels (GQA, causal, padding)."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    b, n, h, d = 1, 16, 2, 8
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(ks[0], (b, n, h, d))
    k = jax.random.normal(ks[1], (b, n, 1, d))
    v = jax.random.normal(ks[2], (b, n, 1, d))
    valid = np.arange(n)[None] < 13
    mask = Mask(causal=True, kv_valid=jnp.asarray(valid))
    params = pltpu.InterpretParams(detect_races=True)
    with interpret_mode(params):
        def loss(q, k, v):
            return jnp.sum(flash_attention(q, k, v, mask=mask, block_sizes=BlockSizes(8, 8)) ** 2)

        val, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert ipc.races is not None and not ipc.races.races_found

    def ref_loss(q, k, v):
        allowed = brute_force_mask(b, n, n, causal=True, kv_valid=valid)
        return jnp.sum(reference(q, k, v, allowed, jnp.full(h, d**-0.5))[0] ** 2)

    r_val, r_grads = jax.value_and_grad(ref_loss, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(val, r_val, rtol=1e-5)
    for g, rg in zip(grads, r_grads, strict=True):
        np.testing.assert_allclose(g, rg, rtol=2e-4, atol=2e-4)


def test_fused_act_calibration():
    """ACT (papers/act_calibration.md §4): sinks keep β of their mass, the rest is handed to
    non-sinks in proportion; per-head β (1 = head untouched); vs the pattern edited by hand."""
    b, n, h, kvh, d = 2, 29, 4, 2, 16
    ks = jax.random.split(jax.random.PRNGKey(2), 3)
    q = jax.random.normal(ks[0], (b, n, h, d))
    k = jax.random.normal(ks[1], (b, n, kvh, d))
    v = jax.random.normal(ks[2], (b, n, kvh, d))
    rng = np.random.default_rng(0)
    sinks = rng.random((b, h, n)) < 0.15
    sinks[:, :, 0] = False  # token 0 is spared, as in the released code
    sinks[:, :, 3] = True
    beta = jnp.array([0.4, 1.0, 0.4, 0.0])
    mask = Mask(causal=True)

    out = compiled(lambda q, k, v: flash_attention(
        q, k, v, mask=mask, block_sizes=BlockSizes(8, 8), act_sinks=jnp.asarray(sinks),
        act_beta=beta), q, k, v)

    allowed = brute_force_mask(b, n, n, causal=True)
    scale = jnp.full(h, d**-0.5)
    logits = np.einsum("bqhd,bkhd->bhqk", q, np.repeat(k, 2, axis=2)) * d**-0.5
    logits = np.where(allowed, logits, -np.inf)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    s_mask = sinks[:, :, None, :]
    s = (a * s_mask).sum(-1, keepdims=True)
    r = (a * ~s_mask).sum(-1, keepdims=True)
    bb = np.asarray(beta)[None, :, None, None]
    a_cal = np.where(s_mask, bb * a, a * (1 + (1 - bb) * s / r))
    np.testing.assert_allclose(a_cal.sum(-1), 1.0, rtol=1e-5)
    want = np.einsum("bhqk,bkhd->bqhd", a_cal, np.repeat(v, 2, axis=2))
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    plain, _ = reference(q, k, v, allowed, scale)
    np.testing.assert_allclose(out[:, :, 1], plain[:, :, 1], rtol=2e-5, atol=2e-5)  # β = 1
    assert np.abs(np.asarray(out[:, :, 0]) - np.asarray(plain[:, :, 0])).max() > 1e-2


def test_fetch_indices_repeat_the_last_computed_block():
    """Skipped steps name an already-resident K/V block, so the pipeline copies nothing."""
    from common.attention.pallas.block_mask import fetch_indices

    st = jnp.array([[EMPTY, PARTIAL, EMPTY, FULL, EMPTY], [EMPTY] * 5, [FULL, EMPTY, EMPTY,
                                                                        PARTIAL, EMPTY]])
    np.testing.assert_array_equal(fetch_indices(st), [[1, 1, 1, 3, 3], [0] * 5, [0, 0, 0, 3, 3]])

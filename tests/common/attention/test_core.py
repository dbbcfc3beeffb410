"""The attention core against brute-force numpy loops."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.attention import BackendUnsupported, Mask, RoPE, dot_product_attention


def brute_force(q, k, v, allowed, scale, softcap=None):
    """Loop over (batch, head, query); query head h reads kv head h // group."""
    b, sq, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    out = np.zeros_like(q, dtype=np.float64)
    for bi, hi, i in itertools.product(range(b), range(h), range(sq)):
        kh = hi // g
        logits = np.array([q[bi, i, hi] @ k[bi, j, kh] for j in range(k.shape[1])]) * scale[hi]
        if softcap is not None:
            logits = softcap * np.tanh(logits / softcap)
        ok = allowed[bi, hi, i]
        if not ok.any():
            continue
        w = np.where(ok, np.exp(logits - logits[ok].max()), 0.0)
        w /= w.sum()
        out[bi, i, hi] = w @ v[bi, :, kh]
    return out


def _qkv(rng, b, sq, skv, h, kvh, d):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return f(b, sq, h, d), f(b, skv, kvh, d), f(b, skv, kvh, d)


def _allowed(b, h, sq, skv, causal=False, seg=None, valid=None, dense=None):
    a = np.ones((b, h, sq, skv), bool)
    if causal:
        a &= np.arange(skv)[None, :] <= (np.arange(sq)[:, None] + skv - sq)
    if seg is not None:
        qs, ks = seg
        a &= qs[:, None, :, None] == ks[:, None, None, :]
    if valid is not None:
        a &= valid[:, None, None, :]
    if dense is not None:
        a &= dense
    return a


CASES = {
    "none": {},
    "causal": {"causal": True},
    "segments": {"seg": True},
    "causal_padding": {"causal": True, "valid": True},
    "dense": {"dense": True},
}


@pytest.mark.parametrize("backend", ["reference", "cpu", "xla"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
def test_matches_brute_force(backend, case, heads, kv_heads):
    rng = np.random.default_rng(hash((case, heads)) % 2**32)
    b, s, d = 2, 7, 8
    q, k, v = _qkv(rng, b, s, s, heads, kv_heads, d)
    spec = CASES[case]
    seg = valid = dense = None
    kw = {}
    if spec.get("seg"):
        ids = np.array([[0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 2]])
        seg = (ids, ids)
        kw.update(q_segment_ids=jnp.asarray(ids), kv_segment_ids=jnp.asarray(ids))
    if spec.get("valid"):
        valid = np.arange(s)[None, :] < np.array([[5], [7]])
        kw["kv_valid"] = jnp.asarray(valid)
    if spec.get("dense"):
        dense = rng.random((b, heads, s, s)) < 0.6
        dense[..., 0] = True
        kw["dense"] = jnp.asarray(dense)
    mask = Mask(causal=spec.get("causal", False), **kw)
    scale = rng.uniform(0.1, 0.5, size=heads).astype(np.float32)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask,
                                scale=jnp.asarray(scale), backend=backend).out
    allowed = _allowed(b, heads, s, s, spec.get("causal", False), seg, valid, dense)
    want = brute_force(q, k, v, allowed, scale)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0)


def test_softcap_and_pattern_reference():
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 1, 5, 5, 2, 1, 4)
    q *= 4
    res = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                mask=Mask(causal=True), softcap=3.0, return_pattern=True)
    scale = np.full(2, 0.5)
    want = brute_force(q, k, v, _allowed(1, 2, 5, 5, causal=True), scale, softcap=3.0)
    np.testing.assert_allclose(np.asarray(res.out), want, atol=2e-5)
    p = np.asarray(res.pattern)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert np.all(p[0, :, 0, 1:] == 0)  # causal: the first query sees only itself
    with pytest.raises(BackendUnsupported, match="softcap"):
        dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), softcap=3.0,
                              backend="xla")


def test_kv_cache_alignment_queries_right_aligned():
    """Fewer queries than keys: query i sits at position skv - sq + i."""
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 2, 6, 2, 2, 4)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                mask=Mask(causal=True), backend="xla").out
    want = brute_force(q, k, v, _allowed(1, 2, 2, 6, causal=True), np.full(2, 0.5))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_prob_transform_applies():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 1, 3, 3, 2, 2, 4)
    uniform = lambda p: jnp.full_like(p, 1.0 / p.shape[-1])
    out = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                prob_transform=uniform).out
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(v.mean(1, keepdims=True), v.shape),
                               atol=1e-6)


def test_bad_input_errors():
    q = jnp.zeros((1, 3, 3, 4))
    k = jnp.zeros((1, 3, 2, 4))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        dot_product_attention(q, q, q, backend="flash")
    with pytest.raises(ValueError, match=r"scale must be a scalar or \[3\]"):
        dot_product_attention(q, q, q, scale=jnp.ones(2))
    with pytest.raises(ValueError, match=r"\[batch, seq, heads, head_dim\]"):
        dot_product_attention(q[0], q[0], q[0])


def rope_brute_force(x, pos, theta, rot_dim):
    """Rotate pairs (i, i + rot_dim/2) by angle pos * theta^(-2i/rot_dim), as complex numbers."""
    half = rot_dim // 2
    out = x.astype(np.float64).copy()
    for idx in np.ndindex(x.shape[:-1]):
        b, s, h = idx
        p = pos[b, s] if pos.ndim == 2 else pos[b, h, s]
        for i in range(half):
            ang = p * theta ** (-2 * i / rot_dim)
            c = complex(x[idx + (i,)], x[idx + (i + half,)]) * complex(np.cos(ang), np.sin(ang))
            out[idx + (i,)], out[idx + (i + half,)] = c.real, c.imag
    return out


@pytest.mark.parametrize("rot_dim", [8, 4])
def test_rope_matches_complex_rotation(rot_dim):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 50, size=(2, 5))
    got = RoPE(8, 100.0, rot_dim).apply(jnp.asarray(x), jnp.asarray(pos))
    np.testing.assert_allclose(np.asarray(got), rope_brute_force(x, pos, 100.0, rot_dim), atol=1e-5)


def test_rope_per_head_positions():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 30, size=(1, 3, 4))
    got = RoPE(8, 1000.0).apply(jnp.asarray(x), jnp.asarray(pos))
    np.testing.assert_allclose(np.asarray(got), rope_brute_force(x, pos, 1000.0, 8), atol=1e-5)
    with pytest.raises(ValueError, match="per-head positions"):
        RoPE(8).apply(jnp.asarray(x), jnp.zeros((1, 2, 4), jnp.int32))


def test_jit_and_grad_through_core():
    rng = np.random.default_rng(7)
    q, k, v = map(jnp.asarray, _qkv(rng, 1, 4, 4, 2, 1, 4))
    f = jax.jit(lambda q: dot_product_attention(q, k, v, mask=Mask(causal=True)).out.sum())
    g = jax.grad(f)(q)
    eps = 1e-3
    e = jnp.zeros_like(q).at[0, 2, 1, 3].set(eps)
    fd = (f(q + e) - f(q - e)) / (2 * eps)
    np.testing.assert_allclose(float(g[0, 2, 1, 3]), float(fd), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("s,heads,kv_heads", [(128, 2, 1), (150, 6, 2)])
def test_cpu_chunked_causal_path_matches_brute_force(s, heads, kv_heads, monkeypatch):
    """Long square causal prefills on the ``cpu`` backend take the chunked path (odd tail chunk
    at 150; query groups folded into the rows of each KV head)."""
    import common.attention.backends as backends

    assert s >= 2 * backends.CAUSAL_CHUNK
    calls = []
    real = backends._chunked_causal
    monkeypatch.setattr(backends, "_chunked_causal", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(s)
    q, k, v = _qkv(rng, 2, s, s, heads, kv_heads, 4)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                mask=Mask(causal=True), backend="cpu").out
    assert calls == [1]
    want = brute_force(q, k, v, _allowed(2, heads, s, s, causal=True), np.full(heads, 0.5))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)

"""rope_attention (RoPE inside the attention, query-dependent key positions) against a
brute-force numpy loop, and the layer's key_positions path through an Intervention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.attention.key_positions import KeyPositions, rope_attention, rope_tables
from common.attention.masks import Mask
from common.attention.rope import RoPE


def _rot(x: np.ndarray, p: float, inv: np.ndarray, dim: int) -> np.ndarray:
    """Rotate-half RoPE of one vector, by hand (float64)."""
    half = dim // 2
    out = x.astype(np.float64).copy()
    for f in range(half):
        a = p * inv[f]
        x1, x2 = x[f], x[f + half]
        out[f] = x1 * np.cos(a) - x2 * np.sin(a)
        out[f + half] = x2 * np.cos(a) + x1 * np.sin(a)
    return out


def _brute(q, k, v, qpos, kpos, mask, rope: RoPE):
    """Loops over batch, head, query, key: rotate, dot, masked softmax, weighted sum."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    inv = np.asarray(rope.inv_freq(), np.float64)
    out = np.zeros((b, sq, h, d))
    for bi in range(b):
        for hi in range(h):
            for i in range(sq):
                qi = _rot(q[bi, i, hi], qpos[bi, hi, i], inv, rope.dim)
                logits = np.full(skv, -np.inf)
                for j in range(skv):
                    if mask[bi, i, j]:
                        kj = _rot(k[bi, j, hi // g], kpos[bi, hi, i, j], inv, rope.dim)
                        logits[j] = qi @ kj / np.sqrt(d)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[bi, i, hi] = p @ v[bi, :, hi // g].astype(np.float64)
    return out


def _case(seed=0, b=2, sq=5, skv=7, h=4, kvh=2, d=8, nb=3, rotary_dim=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, h, d)).astype(np.float32)
    k = rng.standard_normal((b, skv, kvh, d)).astype(np.float32)
    v = rng.standard_normal((b, skv, kvh, d)).astype(np.float32)
    pos = KeyPositions(
        q=jnp.asarray(rng.integers(0, 40, (b, h, sq))),
        kv=jnp.asarray(rng.integers(0, 20, (b, skv))),
        block=jnp.asarray(rng.integers(0, nb, (b, skv))),
        shift=jnp.asarray(rng.integers(-5, 30, (b, h, sq, nb))),
    )
    mask = rng.random((b, sq, skv)) < 0.7
    mask[:, :, 0] = True
    rope = RoPE(d, theta=50.0, rotary_dim=rotary_dim)
    return q, k, v, pos, mask, rope


@pytest.mark.parametrize("implementation", ["reference", "blocked", "gathered", "fixed",
                                            "tables", "gathered_pattern"])
@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_rope_attention_matches_brute_force(implementation, rotary_dim):
    """Every (query, key) pair at its own position, GQA, a random mask, partial rotary; the
    gathered path (slots, softmax over them) with blocks of uneven sizes (one possibly
    empty), with a fixed block, with cos/sin read from RoPE tables, and with the pattern
    asked for (the logits back in key order)."""
    q, k, v, pos, mask, rope = _case(rotary_dim=rotary_dim)
    pattern = implementation == "gathered_pattern"
    if implementation in ("gathered", "fixed", "tables", "gathered_pattern"):
        fixed = 1 if implementation == "fixed" else 0
        pos = pos.replace(block_size=int(np.bincount(np.asarray(pos.block).ravel()).max()),
                          fixed_blocks=fixed, shift=pos.shift.at[..., :fixed].set(0))
        if implementation == "tables":  # |q - shift| < 45, kv < 20
            cos, sin = rope_tables(rope, 50)
            pos = pos.replace(rope_cos=cos, rope_sin=sin)
        implementation = "blocked"
    want = _brute(q, k, v, np.asarray(pos.q), np.asarray(pos.dense()), mask, rope)
    res = rope_attention(q, k, v, pos, rope, mask=Mask(dense=jnp.asarray(mask)[:, None]),
                         implementation=implementation, chunk=2, return_pattern=pattern)
    np.testing.assert_allclose(np.asarray(res.out), want, atol=2e-5, rtol=0)
    if pattern:
        np.testing.assert_allclose(np.asarray(res.pattern).sum(-1), 1.0, atol=1e-5)


def test_dense_positions_by_hand():
    """``dense()``: base position plus the shift of the key's block for that query and head."""
    pos = KeyPositions(q=jnp.zeros((1, 2, 2), int), kv=jnp.asarray([[0, 1, 10]]),
                       block=jnp.asarray([[0, 1, 1]]),
                       shift=jnp.asarray([[[[0, 5], [0, 7]], [[1, 2], [3, 4]]]]))
    np.testing.assert_array_equal(np.asarray(pos.dense()),
                                  [[[[0, 6, 15], [0, 8, 17]], [[1, 3, 12], [3, 5, 14]]]])


def test_plain_positions_equal_plain_attention():
    """One block, shift 0: the usual RoPE attention (rotate q and k once, then attend)."""
    from common.attention.core import dot_product_attention

    q, k, v, _, _, rope = _case(sq=6, skv=6)
    b, h = 2, 4
    p = jnp.broadcast_to(jnp.arange(6), (b, 6))
    pos = KeyPositions(q=jnp.broadcast_to(p[:, None], (b, h, 6)), kv=p,
                       block=jnp.zeros((b, 6), int), shift=jnp.zeros((b, h, 6, 1), int))
    got = rope_attention(q, k, v, pos, rope, mask=Mask(causal=True)).out
    want = dot_product_attention(rope.apply(q, p), rope.apply(k, p), v, mask=Mask(causal=True),
                                 backend="reference").out
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_bad_inputs():
    q, k, v, pos, _, rope = _case()
    with pytest.raises(ValueError, match="KeyPositions.shift"):
        rope_attention(q, k, v, pos.replace(shift=pos.shift[:, :1]), rope)
    with pytest.raises(ValueError, match="implementation"):
        rope_attention(q, k, v, pos, rope, implementation="fast")


def _tiny_model():
    from flax import nnx

    from common.models import DecoderLM, ModelConfig

    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                      d_mlp=48, rope_theta=100.0, tie_embeddings=True)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    # larger weights than the default init, so attention is far from uniform
    state = nnx.state(model, nnx.Param)
    state = jax.tree.map(lambda a: a * 10.0 if a.ndim >= 3 else a, state)
    nnx.update(model, state)
    return model


def _shifted_positions(q, k, params, layer):  # noqa: ARG001
    """Keys 0..2 in block 1, seen 3 positions later; the rest at their own index."""
    b, sq, h, _ = q.shape
    skv = k.shape[1]
    block = jnp.broadcast_to((jnp.arange(skv) < 3).astype(int), (b, skv))
    shift = jnp.broadcast_to(jnp.asarray([0, 3]), (b, h, sq, 2))
    qp = jnp.broadcast_to(params["q"][:, None], (b, h, sq))
    return KeyPositions(q=qp, kv=jnp.broadcast_to(jnp.arange(skv), (b, skv)), block=block,
                        shift=shift)


def test_layer_key_positions_through_intervention():
    """The model's key_positions path equals the plain forward when the positions are the plain
    ones, differs when a block is shifted, and a cached decode (keys stored before RoPE) equals
    the full forward."""
    from common.interp import Intervention
    from common.models.decoder import init_cache

    model = _tiny_model()
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 50, (1, 8)))

    def plain_fn(q, k, params, layer):  # noqa: ARG001
        b, sq, h, _ = q.shape
        skv = k.shape[1]
        return KeyPositions(q=jnp.broadcast_to(params["q"][:, None], (b, h, sq)),
                            kv=jnp.broadcast_to(jnp.arange(skv), (b, skv)),
                            block=jnp.zeros((b, skv), int), shift=jnp.zeros((b, h, sq, 1), int))

    base = model(ids)
    same = model(ids, intervention=Intervention(key_positions=plain_fn,
                                                key_params={"q": jnp.arange(8)[None]}))
    np.testing.assert_allclose(np.asarray(same), np.asarray(base), atol=2e-4, rtol=0)
    iv = Intervention(key_positions=_shifted_positions, key_params={"q": jnp.arange(8)[None]})
    moved = model(ids, intervention=iv)
    assert float(jnp.abs(moved - base)[0, 3:].max()) > 1e-3
    # cached: prefill 5 tokens, then 3 one at a time
    cache = init_cache(model.config, 1, 8)
    outs = []
    for a, c in ((0, 5), (5, 6), (6, 7), (7, 8)):
        step = Intervention(key_positions=_shifted_positions,
                            key_params={"q": jnp.arange(a, c)[None]})
        logits, cache = model.forward(ids[:, a:c], hooks=step.hooks(model.config), cache=cache)
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(moved),
                               atol=2e-4, rtol=0)


def test_layer_key_positions_need_rope():
    from flax import nnx

    from common.interp import Intervention
    from common.models import DecoderLM, ModelConfig

    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_head=8,
                      d_mlp=32, pos="learned", max_position=32, norm="layer",
                      gated_mlp=False, act="gelu")
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="RoPE"):
        model(jnp.zeros((1, 4), int), intervention=Intervention(
            key_positions=_shifted_positions, key_params={"q": jnp.arange(4)[None]}))

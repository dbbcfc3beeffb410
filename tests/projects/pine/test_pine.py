"""PINE on a tiny random Llama in float64 (4 query heads on 2 KV heads): invariance, prefix,
k = 1, bijection, mask semantics, cached decoding, negative controls.

The whole module runs under 64-bit JAX and the model computes in float64 (norms, RoPE at
query-dependent key positions, softmax, logits), so "identical" is checked to 1e-10 on logits
of order 10, where float32 rounding alone would be ~1e-5."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.pine import pine_logits
from projects.pine.decode import pine_decode, pine_decode_eager
from projects.pine.forward import pine_forward
from projects.pine.layout import PineInputError, build_layout, layout_from_spans
from projects.pine.method import key_params, pine_key_positions, segment_importance
from tests.projects.pine.tiny import VOCAB, tiny_model

# float64 rounding of the permuted sums: ~1e-14 of logits of size ~10; the controls differ by
# order 1. The tolerance is set once here and never loosened.
ATOL = 1e-10
F64 = jnp.float64


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def model(_x64):
    m = tiny_model(dtype="float64")
    assert m.embed.embedding[...].dtype == F64
    return m


def _prompt(seed: int, lens, p=4, s=3):
    rng = np.random.default_rng(seed)
    ids = lambda n: [int(x) for x in rng.integers(0, VOCAB, n)]  # noqa: E731
    return ids(p), [ids(n) for n in lens], ids(s)


def _spread(model, pre, segs, suf, method, perms):
    outs = [pine_logits(model, pre, [segs[i] for i in perm], suf, method) for perm in perms]
    return max(float(np.abs(o - outs[0]).max()) for o in outs)


@pytest.mark.parametrize("lens", [(2, 3), (3, 1, 4), (2, 3, 1, 2)])
def test_invariant_under_every_permutation(model, lens):
    """PINE and PCW: the suffix logits are the same for every order of the segments; vanilla,
    NIA and PINE without re-assignment (the negative controls) are not."""
    pre, segs, suf = _prompt(len(lens), lens)
    perms = list(itertools.permutations(range(len(lens))))
    for method in ("pine", "pcw", "pine_reverse"):
        assert _spread(model, pre, segs, suf, method, perms) < ATOL, method
    for method in ("vanilla", "nia", "pine_no_reassign"):
        assert _spread(model, pre, segs, suf, method, perms) > 1e-2, method


def test_invariant_under_random_permutations_k6(model):
    pre, segs, suf = _prompt(6, (2, 1, 3, 2, 4, 1))
    rng = np.random.default_rng(0)
    perms = [tuple(range(6))] + [tuple(rng.permutation(6)) for _ in range(5)]
    assert _spread(model, pre, segs, suf, "pine", perms) < ATOL
    assert _spread(model, pre, segs, suf, "vanilla", perms) > 1e-2


def test_segment_tokens_move_with_their_segment(model):
    """Equivariance: a segment's token logits are the same wherever the segment is put."""
    pre, segs, suf = _prompt(3, (2, 3, 2))
    a = build_layout(pre, segs, suf)
    b = build_layout(pre, [segs[2], segs[0], segs[1]], suf)
    la, lb = pine_forward(model, a), pine_forward(model, b)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        ra = la[a.doc == i + 1]
        rb = lb[b.doc == j + 1]
        np.testing.assert_allclose(ra, rb, atol=ATOL, rtol=0)


def test_prefix_bit_identical_to_vanilla(model):
    """The prefix's logits: bit for bit those of the vanilla method on the same compiled path
    (whatever the method and the segments), and those of the plain forward to float64 rounding
    (a separately compiled program: XLA evaluates RoPE's cos/sin in other fusions)."""
    pre, segs, suf = _prompt(4, (3, 2, 2), p=6)
    lay = build_layout(pre, segs, suf)
    vanilla = pine_forward(model, lay, "vanilla")
    other = build_layout(pre, [[1, 2], [3], [4, 5, 6, 7]], suf)
    for method in ("pine", "pcw", "nia", "pine_reverse", "pine_no_reassign"):
        np.testing.assert_array_equal(pine_forward(model, lay, method)[:6], vanilla[:6])
        np.testing.assert_array_equal(pine_forward(model, other, method)[:6], vanilla[:6])
    assert np.abs(pine_forward(model, lay, "pine")[6:] - vanilla[6:]).max() > 1e-2
    plain = np.asarray(model(jnp.asarray(lay.ids)[None]))[0]
    np.testing.assert_allclose(vanilla[:6], plain[:6], atol=ATOL, rtol=0)


def test_one_segment_is_vanilla(model):
    pre, segs, suf = _prompt(5, (5,))
    lay = build_layout(pre, segs, suf)
    plain = np.asarray(model(jnp.asarray(lay.ids)[None]))[0]
    for method in ("pine", "pine_reverse", "nia", "pcw", "vanilla"):
        np.testing.assert_allclose(pine_forward(model, lay, method), plain, atol=ATOL, rtol=0)


def test_vanilla_method_is_the_plain_forward(model):
    pre, segs, suf = _prompt(6, (2, 4, 3))
    lay = build_layout(pre, segs, suf)
    plain = np.asarray(model(jnp.asarray(lay.ids)[None]))[0]
    np.testing.assert_allclose(pine_forward(model, lay, "vanilla"), plain, atol=ATOL, rtol=0)


def _positions(lens, p=3, s=2, seed=0, method="pine"):
    lay = build_layout(list(range(p)), [list(range(n)) for n in lens], list(range(s)))
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((1, lay.n, 4, 8)), F64)
    k = jnp.asarray(rng.standard_normal((1, lay.n, 2, 8)), F64)
    kp = pine_key_positions(q, k, key_params(lay, method, lay.n, lay.n), 0)
    return lay, np.asarray(kp.dense())[0], np.asarray(kp.q)[0]


@pytest.mark.parametrize("lens", [(2, 3), (1, 4, 2, 3), (3, 3, 3)])
def test_reassignment_is_a_bijection(lens):
    """For every head and query: the segment keys' positions are a permutation of [P, E), each
    segment contiguous and in order, the query's own segment at [E - L_i, E); prefix keys at
    their index; suffix queries keep E + t."""
    lay, dense, qpos = _positions(lens)
    p, e = lay.prefix_len, lay.seg_end
    seg = lay.doc > 0
    for h in range(4):
        for i in range(lay.n):
            if lay.doc[i] == 0:
                continue
            row = dense[h, i]
            assert sorted(row[seg].tolist()) == list(range(p, e))
            np.testing.assert_array_equal(row[:p], np.arange(p))
            for j in range(lay.k):
                block = row[lay.doc == j + 1]
                np.testing.assert_array_equal(np.diff(block), 1)
            if lay.doc[i] > 0:
                own = row[lay.doc == lay.doc[i]]
                assert own[0] == e - lay.seg_lens[lay.doc[i] - 1]
                assert qpos[h, i] == own[lay.off[i]]
            else:
                assert qpos[h, i] == i  # suffix: E + t
                np.testing.assert_array_equal(row[e:], np.arange(e, lay.n))


def test_order_follows_importance_and_reverse_flips_it():
    lay, dense, _ = _positions((2, 2, 2, 2), seed=3)
    _, rev, _ = _positions((2, 2, 2, 2), seed=3, method="pine_reverse")
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((1, lay.n, 4, 8)), F64)
    k = jnp.asarray(rng.standard_normal((1, lay.n, 2, 8)), F64)
    params = key_params(lay, "pine", lay.n, lay.n)
    imp = np.asarray(segment_importance(q, k, params["q_doc"], params["kv_doc"],
                                        params["seg_len"]))[0]
    t = lay.n - 1  # a suffix query
    starts = [dense[0, t][lay.doc == j + 1][0] for j in range(4)]
    assert np.argmax(imp[0, t]) == int(np.argmax(starts))  # most important nearest
    rstarts = [rev[0, t][lay.doc == j + 1][0] for j in range(4)]
    assert np.argmax(imp[0, t]) == int(np.argmin(rstarts))  # reversed: farthest


def test_importance_by_brute_force():
    """Imp(g, D_j) = Σ_{m∈g} Σ_{n∈D_j} softmax over other segments' keys / L_j, by loops."""
    lay = build_layout([0, 1], [[0, 1, 2], [0], [0, 1]], [0, 1])
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, lay.n, 4, 8))
    k = rng.standard_normal((1, lay.n, 2, 8))
    params = key_params(lay, "pine", lay.n, lay.n)
    got = np.asarray(segment_importance(jnp.asarray(q, F64), jnp.asarray(k, F64),
                                        params["q_doc"], params["kv_doc"], params["seg_len"]))[0]
    for h in range(4):
        for i in range(lay.n):
            keys = [j for j in range(lay.n) if lay.doc[j] > 0 and lay.doc[j] != lay.doc[i]]
            group = ([m for m in range(lay.n) if lay.doc[m] == lay.doc[i]] if lay.doc[i] > 0
                     else [i])
            want = np.zeros(3)
            for m in group:
                s = np.array([q[0, m, h] @ k[0, j, h // 2] / np.sqrt(8) for j in keys])
                w = np.exp(s - s.max())
                w /= w.sum()
                for wj, j in zip(w, keys, strict=True):
                    want[lay.doc[j] - 1] += wj / lay.seg_lens[lay.doc[j] - 1]
            np.testing.assert_allclose(got[h, i], want, atol=1e-13, rtol=1e-12)


def test_mean_importance_does_not_reward_length():
    """A segment of identical keys repeated 4 times is as important as the same key once."""
    lay = build_layout([0], [[0], [0, 0, 0, 0], [0]], [0])
    d = 8
    key_a, key_b = np.eye(d)[0], np.eye(d)[1]
    k = np.zeros((1, lay.n, 2, d))
    k[0, lay.doc == 1] = key_a
    k[0, lay.doc == 2] = key_a
    k[0, lay.doc == 3] = key_b
    q = np.zeros((1, lay.n, 4, d))
    q[0, -1] = key_a + key_b  # the suffix query likes both keys equally
    params = key_params(lay, "pine", lay.n, lay.n)
    imp = np.asarray(segment_importance(jnp.asarray(q, F64), jnp.asarray(k, F64),
                                        params["q_doc"], params["kv_doc"],
                                        params["seg_len"]))[0, 0, -1]
    np.testing.assert_allclose(imp[0], imp[1], rtol=1e-12)
    np.testing.assert_allclose(imp[0], imp[2], rtol=1e-12)


def test_mask_semantics():
    """A later token of another segment changes an earlier segment's tokens (bidirectional); a
    later token of the same segment does not (causal inside); the suffix changes no segment.

    One layer and two segments: with more layers a later token reaches earlier tokens of its
    own segment through the other segments (layer 1 reads what they read at layer 0), and with
    k > 2 through the segment's order (its importance sums over all its tokens): both as in
    the paper."""
    model = tiny_model(n_layers=1, dtype="float64")
    pre, segs, suf = _prompt(8, (3, 3))
    base = pine_forward(model, build_layout(pre, segs, suf))
    other = pine_forward(model, build_layout(pre, [segs[0], segs[1][:2] + [(segs[1][2] + 1) % VOCAB]],
                                             suf))
    same = pine_forward(model, build_layout(pre, [segs[0][:2] + [(segs[0][2] + 1) % VOCAB],
                                                  segs[1]], suf))
    tail = pine_forward(model, build_layout(pre, segs, suf[:2] + [(suf[2] + 1) % VOCAB]))
    p = len(pre)
    assert np.abs(other[p:p + 2] - base[p:p + 2]).max() > 1e-3  # seg 1 sees seg 2's last token
    np.testing.assert_allclose(same[p:p + 2], base[p:p + 2], atol=ATOL, rtol=0)
    np.testing.assert_allclose(tail[:p + 6], base[:p + 6], atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["pine", "pcw", "nia", "pine_reverse"])
def test_cached_decoding_equals_recompute(model, method):
    pre, segs, suf = _prompt(9, (2, 3, 2))
    lay = build_layout(pre, segs, suf)
    new, logits = pine_decode(model, lay, method, 4)
    full = pine_forward(model, build_layout(pre, segs, suf + new[:-1]), method)
    np.testing.assert_allclose(logits, full[lay.n - 1:], atol=ATOL, rtol=0)


def test_eager_decoding_equals_jitted():
    """The eager decode (stacked cache, op by op; the benchmark's baseline) gives the jitted
    one's tokens and logits (float32: the stacked cache's write is not 64-bit clean)."""
    with jax.enable_x64(False):
        model = tiny_model()
        pre, segs, suf = _prompt(10, (3, 2))
        lay = build_layout(pre, segs, suf)
        new, logits = pine_decode(model, lay, "pine", 3)
        new_e, logits_e = pine_decode_eager(model, lay, "pine", 3)
    assert new == new_e
    np.testing.assert_allclose(logits, logits_e, atol=1e-5, rtol=0)


def test_bad_inputs(model):
    with pytest.raises(PineInputError, match="empty segment"):
        pine_logits(model, [1], [[2], []], [3])
    with pytest.raises(PineInputError, match="no segments"):
        pine_logits(model, [1], [], [3])
    with pytest.raises(PineInputError, match="empty suffix"):
        pine_logits(model, [1], [[2]], [])
    with pytest.raises(PineInputError, match="unknown method"):
        pine_logits(model, [1], [[2]], [3], method="permute")
    with pytest.raises(PineInputError, match="vocabulary"):
        pine_logits(model, [1], [[VOCAB]], [3])
    with pytest.raises(PineInputError, match="overlaps"):
        layout_from_spans(list(range(10)), [(1, 4), (3, 6)])
    with pytest.raises(PineInputError, match="gap"):
        layout_from_spans(list(range(10)), [(1, 4), (5, 6)])
    with pytest.raises(PineInputError, match="empty"):
        layout_from_spans(list(range(10)), [(1, 1)])
    lay = layout_from_spans(list(range(10)), [(1, 4), (4, 6)])
    assert lay.seg_lens == (3, 2) and lay.prefix_len == 1 and lay.suffix_len == 4


def test_model_without_rope():
    from flax import nnx

    from common.models import DecoderLM, ModelConfig

    cfg = ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2,
                      d_head=8, d_mlp=32, pos="learned", max_position=32, norm="layer",
                      gated_mlp=False, act="gelu")
    with pytest.raises(PineInputError, match="RoPE"):
        pine_logits(DecoderLM(cfg, rngs=nnx.Rngs(0)), [1], [[2], [3]], [4])


def test_batched_last_only_equals_single(model):
    """A batch of prompts of different lengths (right-padded together), read at each prompt's
    last token, equals each prompt alone."""
    from projects.pine.forward import pine_forward_batch

    lays = [build_layout(*_prompt(s, lens)) for s, lens in ((1, (2, 5)), (2, (4, 1)), (3, (1, 1)))]
    got = pine_forward_batch(model, lays, "pine", last_only=True)
    for lay, g in zip(lays, got, strict=True):
        np.testing.assert_allclose(g, pine_forward(model, lay)[-1], atol=ATOL, rtol=0)

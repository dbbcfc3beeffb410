"""ACT calibration (common.attention.act) against a loop-by-loop numpy transcription of the
released code's rule, its invariants, the fused Pallas path and the backend's choice of it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.attention import act
from common.attention.backends import attend, use_fused_act
from common.attention.masks import Mask


def _causal_pattern(rng, b, h, n, sharp=3.0):
    """Random row-stochastic causal patterns ``[b, h, n, n]`` with a strong first column and a
    few strong later columns (sinks beyond the first token)."""
    logits = rng.standard_normal((b, h, n, n)) * sharp
    logits[..., 0] += 4.0
    logits[..., n // 2] += 3.0
    mask = np.tril(np.ones((n, n), bool))
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _reference(A, beta, tau):
    """The released code's ACT on one head's ``A [N, N]``, transcribed loop by loop
    (papers/act_calibration.md §3-§4): column mean over the ``N - j`` queries that see key j,
    sinks above τ minus the first flagged one, β on sinks, proportional redistribution."""
    N = A.shape[0]
    scores = [sum(A[i, j] for i in range(N)) / (N - j) for j in range(N)]
    flagged = [j for j in range(N) if scores[j] > tau]
    sinks = set(flagged[1:])
    out = A.copy()
    for i in range(N):
        s = sum(A[i, j] for j in sinks)
        r = sum(A[i, j] for j in range(N) if j not in sinks)
        for j in range(N):
            out[i, j] = beta * A[i, j] if j in sinks else A[i, j] + (1 - beta) * s * A[i, j] / r
    return out, sinks


@pytest.fixture(autouse=True)
def _x64(request):
    """float64 for the exactness tests; the Pallas kernels trace in float32/int32."""
    with jax.enable_x64("pallas" not in request.node.name):
        yield


def test_matches_loop_reference_including_edge_sinks():
    rng = np.random.default_rng(0)
    A = _causal_pattern(rng, 2, 3, 11)
    got = np.asarray(act.act_calibrate(jnp.asarray(A), beta=0.4, threshold=0.1))
    n_sinks = 0
    for b in range(2):
        for h in range(3):
            want, sinks = _reference(A[b, h], 0.4, 0.1)
            n_sinks += len(sinks)
            np.testing.assert_allclose(got[b, h], want, rtol=0, atol=1e-12)
    assert n_sinks > 0  # the data has sinks beyond the spared one


def test_rows_sum_to_one_sinks_scaled_ratios_kept():
    rng = np.random.default_rng(1)
    A = jnp.asarray(_causal_pattern(rng, 2, 4, 13))
    sinks = act.sink_mask(act.column_scores(A), 0.1)
    out = np.asarray(act.calibrate(A, sinks, 0.4))
    A, S = np.asarray(A), np.asarray(sinks)
    assert S.sum() > 0
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-12)
    assert (out[..., np.triu_indices(13, 1)[0], np.triu_indices(13, 1)[1]] == 0).all()
    Sq = np.broadcast_to(S[:, :, None, :], A.shape)
    np.testing.assert_array_equal(out[Sq], 0.4 * A[Sq])  # sinks: exactly β·A
    gain = np.where(Sq, np.nan, out / np.where(A > 0, A, np.nan))  # non-sink gain per row
    spread = np.nanmax(gain, -1) - np.nanmin(gain, -1)
    assert np.nanmax(spread) < 1e-12  # one factor per row: ratios between non-sinks kept


def test_no_sink_is_identity_and_first_flag_is_spared():
    rng = np.random.default_rng(2)
    A = jnp.asarray(_causal_pattern(rng, 1, 2, 9))
    np.testing.assert_array_equal(np.asarray(act.act_calibrate(A, threshold=1.0)), np.asarray(A))
    np.testing.assert_array_equal(np.asarray(act.act_calibrate(A, beta=1.0)), np.asarray(A))
    # Only key 0 qualifies: it is the first flagged, spared, so nothing changes.
    one = np.tril(np.ones((5, 5)))
    one[:, 0] = 0.0
    one[:, 0] = np.where(np.arange(5) >= 0, 0.9, 0.0)
    one[0] = [1, 0, 0, 0, 0]
    for i in range(1, 5):
        one[i, 1:i + 1] = 0.1 / i
    P = jnp.asarray(one[None, None])
    np.testing.assert_array_equal(np.asarray(act.act_calibrate(P, threshold=0.2)), one[None, None])
    # If key 0 does not qualify, the first *later* sink is the spared one (the code's quirk).
    s = act.sink_mask(jnp.asarray([[[0.05, 0.3, 0.2, 0.0]]]), 0.1)
    np.testing.assert_array_equal(np.asarray(s), [[[False, False, True, False]]])
    s = act.sink_mask(jnp.asarray([[[0.05, 0.3, 0.2, 0.0]]]), 0.1, spare_first=False)
    np.testing.assert_array_equal(np.asarray(s), [[[False, True, True, False]]])


def test_alpha_over_n_and_padding():
    scores = jnp.asarray([[[0.5, 0.2, 0.3, 0.1]]])
    # α = 1 over N = 4 tokens: bar 0.25; over 3 valid tokens: bar 1/3.
    s = act.sink_mask(scores, 1.0, criterion="alpha_over_n", spare_first=False)
    np.testing.assert_array_equal(np.asarray(s), [[[True, False, True, False]]])
    tv = jnp.asarray([[True, True, True, False]])
    s = act.sink_mask(scores, 1.0, criterion="alpha_over_n", token_valid=tv, spare_first=False)
    np.testing.assert_array_equal(np.asarray(s), [[[True, False, False, False]]])
    # Right padding: ACT on the padded batch equals ACT on the unpadded sequence.
    rng = np.random.default_rng(3)
    A = _causal_pattern(rng, 1, 2, 7)
    padded = np.zeros((1, 2, 10, 10))
    padded[..., :7, :7] = A
    for i in range(7, 10):  # pad queries attend somewhere; they must not count
        padded[..., i, : i + 1] = 1.0 / (i + 1)
    tv = jnp.asarray(np.arange(10)[None] < 7)
    got = np.asarray(act.act_calibrate(jnp.asarray(padded), token_valid=tv))[..., :7, :7]
    np.testing.assert_allclose(got, np.asarray(act.act_calibrate(jnp.asarray(A))), atol=1e-12)


def test_unknown_criterion_is_an_error():
    with pytest.raises(ValueError, match="criterion"):
        act.ACTCalibration("mean")


def test_fused_choice_per_platform():
    assert use_fused_act("auto", "tpu")
    assert not use_fused_act("auto", "cpu")
    assert not use_fused_act("auto", "gpu")  # the fused kernel is Mosaic TPU only
    assert use_fused_act("pallas", "cpu")
    assert not use_fused_act("reference", "tpu")
    assert not use_fused_act("auto")  # this machine is a CPU


def test_fused_pallas_equals_reference_in_interpret_mode():
    """``attend`` with an ACT transform: the fused kernel (``pallas``, interpret mode on CPU)
    gives the reference path's output; ``auto`` on CPU runs the reference."""
    rng = np.random.default_rng(4)
    b, n, h, kvh, d = 1, 16, 4, 2, 8
    q = jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, n, kvh, d)), jnp.float32) * 2.0
    k = k.at[:, 5].multiply(4.0)  # a strong key beyond the first: a hidden sink
    v = jnp.asarray(rng.standard_normal((b, n, kvh, d)), jnp.float32)
    scale = jnp.full((h,), d**-0.5, jnp.float32)
    calib = act.ACTCalibration()
    params = act.act_params(0.4, 0.1)
    heads = jnp.asarray([True, False, True, True])

    def transform(p):
        return jnp.where(heads[None, :, None, None], calib(p, params), p)

    transform.fused_act = calib.fused(params, heads)
    mask = Mask(causal=True)
    ref, _ = attend("reference", q, k, v, mask, scale, prob_transform=transform)
    plain, _ = attend("reference", q, k, v, mask, scale)
    assert float(jnp.abs(ref - plain).max()) > 1e-3  # ACT changes something
    fused, _ = attend("pallas", q, k, v, mask, scale, prob_transform=transform)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), atol=2e-5)
    auto, _ = attend("auto", q, k, v, mask, scale, prob_transform=transform)
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(ref))

"""Sweeps against explicit loops of single interventions, and attribution against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import (
    Intervention,
    Labelled,
    Patch,
    PatchingResult,
    ablation_attribution,
    activation_patching,
    attribution_patching,
    compare_patching,
    direct_logit_attribution,
    final_norm_linear,
    forward,
    head_ablation_sweep,
    logit_diff,
    metric_value,
    patch_sweep,
    run_with_cache,
)
from common.interp.views import W_U
from tests.common.interp.conftest import TINY

L, H, KV, D = TINY.n_layers, TINY.n_heads, TINY.n_kv_heads, TINY.d_head
A, B = 3, 5  # answer / wrong tokens of the logit-difference metric


@pytest.fixture(scope="module")
def metric():
    return logit_diff(jnp.asarray([A, 9]), jnp.asarray([B, 4]))


def _one_hot_patch(cache, site, layer, head, pos=None, weight=True):
    """A patch of ``site`` at (layer, head[, pos]) from ``cache``, spelled over all layers with a
    one-hot mask so that every (layer, head) runs the same compiled program."""
    value = cache.stack(site).values  # [L, b, s, h, d]
    shape = (L, 1, value.shape[2] if pos is not None else 1, value.shape[3], 1)
    idx = (layer, 0, 0 if pos is None else pos, head, 0)
    where = jnp.zeros(shape, type(weight)).at[idx].set(weight)
    return Intervention(patches=(Patch(site=site, layers=tuple(range(L)), value=value,
                                       where=where),))


def _metric_by_hand(logits):
    lg = np.asarray(logits, np.float64)[:, -1]
    return float(np.mean([lg[0, A] - lg[0, B], lg[1, 9] - lg[1, 4]]))


def test_metric_reads_only_what_it_needs(tiny, ids, metric):
    np.testing.assert_allclose(float(metric_value(tiny, ids, metric)),
                               _metric_by_hand(forward(tiny, ids)), atol=1e-5)


def test_patching_sweep_equals_a_loop_of_single_head_patches(tiny, ids, corrupted, metric):
    """The result is the change from the corrupted run; the patched metrics are a loop's."""
    scores = activation_patching(tiny, ids, corrupted, metric)  # denoise: run corrupted
    assert isinstance(scores, PatchingResult) and isinstance(scores, Labelled)
    assert scores.axes == ("layer", "head")
    _, clean = run_with_cache(tiny, ids, names_filter="z")
    want = np.zeros((L, H))
    for layer in range(L):
        for h in range(H):
            iv = _one_hot_patch(clean, "z", layer, h)
            want[layer, h] = _metric_by_hand(forward(tiny, corrupted, intervention=iv))
    m_clean, m_corrupt = _metric_by_hand(forward(tiny, ids)), _metric_by_hand(forward(tiny,
                                                                                      corrupted))
    np.testing.assert_allclose(float(scores.clean), m_clean, atol=1e-5)
    np.testing.assert_allclose(float(scores.corrupted), m_corrupt, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), want - m_corrupt, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(scores.patched), want, atol=1e-5, rtol=0)
    assert np.ptp(want) > 1e-2  # heads differ


def test_per_position_and_kv_head_sweeps(tiny, ids, corrupted, metric):
    scores = activation_patching(tiny, ids, corrupted, metric, site="v", per_position=True,
                                 direction="noise")
    assert scores.axes == ("layer", "kv_head", "pos") and scores.shape == (L, KV, ids.shape[1])
    _, bad = run_with_cache(tiny, corrupted, names_filter="v")
    m_corrupt = _metric_by_hand(forward(tiny, corrupted))  # noise: still the change from it
    for layer, kv, pos in [(0, 0, 0), (0, 1, 4), (1, 1, 5), (1, 0, 2)]:
        iv = _one_hot_patch(bad, "v", layer, kv, pos)
        want = _metric_by_hand(forward(tiny, ids, intervention=iv))
        np.testing.assert_allclose(float(scores.values[layer, kv, pos]), want - m_corrupt,
                                   atol=1e-5)


def test_ablation_sweep_zero_and_mean(tiny, ids, corrupted, metric):
    zero = head_ablation_sweep(tiny, ids, metric)
    mean = head_ablation_sweep(tiny, ids, metric, kind="mean", reference_ids=corrupted)
    _, ref = run_with_cache(tiny, corrupted, names_filter="z")
    for layer, h in [(0, 0), (0, 3), (1, 2)]:
        iv = Intervention.ablate(TINY, [(layer, h)])
        got = _metric_by_hand(forward(tiny, ids, intervention=iv))
        np.testing.assert_allclose(float(zero.values[layer, h]), got, atol=1e-5)
        iv = Intervention.mean_ablate(TINY, [(layer, h)], ref)
        got = _metric_by_hand(forward(tiny, ids, intervention=iv))
        np.testing.assert_allclose(float(mean.values[layer, h]), got, atol=1e-5)
    # Zeroing head_out (computed per head on request) is zeroing z.
    np.testing.assert_allclose(np.asarray(patch_sweep(tiny, ids, 0.0, metric, site="head_out")),
                               np.asarray(zero), atol=1e-5)
    # A plain metric function of the full logits gives the same numbers.
    full = head_ablation_sweep(tiny, ids, lambda lg: jnp.mean(lg[0, -1, A] - lg[0, -1, B]
                                                              + lg[1, -1, 9] - lg[1, -1, 4]) / 1)
    np.testing.assert_allclose(np.asarray(full), 2 * np.asarray(zero), atol=1e-5)


def test_attribution_patching_is_the_directional_derivative(tiny, ids, corrupted, metric):
    """The linear estimate equals d/de metric(z + e·(z_clean - z)) at e = 0, per head, which a
    central difference through a float-weighted patch computes independently."""
    est = attribution_patching(tiny, ids, corrupted, metric)
    _, clean = run_with_cache(tiny, ids, names_filter="z")
    eps = 1e-2

    def f(layer, h, e):
        iv = _one_hot_patch(clean, "z", layer, h, weight=e)
        return _metric_by_hand(forward(tiny, corrupted, intervention=iv))

    for layer, h in [(0, 1), (1, 3)]:
        fd = (f(layer, h, eps) - f(layer, h, -eps)) / (2 * eps)
        np.testing.assert_allclose(float(est.values[layer, h]), fd, rtol=2e-2, atol=2e-4)
    # Zero ablation: the estimate -grad·z has the exact sweep's sign on the strongest heads.
    exact = np.asarray(head_ablation_sweep(tiny, ids, metric)) - float(
        metric_value(tiny, ids, metric))
    approx = np.asarray(ablation_attribution(tiny, ids, metric))
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.5


def test_direct_logit_attribution_sums_to_the_logit_difference(tiny, ids):
    """DLA of every component (embedding, each head, each MLP) adds up to the logit diff."""
    dla = direct_logit_attribution(tiny, ids, A, B)
    assert dla.axes == ("layer", "head") and dla.shape == (L, H)
    logits, c = run_with_cache(tiny, ids, names_filter=("resid_pre", "mlp_out", "resid_post"))
    final = c["resid_post", L - 1][:, -1]
    direction = (W_U(tiny)[:, A] - W_U(tiny)[:, B])[None]
    rest = [c["resid_pre", 0][:, -1]] + [c["mlp_out", layer][:, -1] for layer in range(L)]
    rest = jnp.stack(rest)  # [n, b, d]
    rest_dla = jnp.einsum("nbd,bd->b", final_norm_linear(tiny, rest, final), direction).mean()
    lg = np.asarray(logits, np.float64)[:, -1]
    np.testing.assert_allclose(float(np.asarray(dla).sum() + rest_dla),
                               float((lg[:, A] - lg[:, B]).mean()), atol=1e-4)


def test_sweep_bad_input(tiny, ids, corrupted, metric):
    with pytest.raises(ValueError, match="sweep site must be a per-head site"):
        activation_patching(tiny, ids, corrupted, metric, site="attn_out")
    with pytest.raises(ValueError, match="must have the same shape"):
        activation_patching(tiny, ids, corrupted[:, :4], metric)
    with pytest.raises(ValueError, match="direction must be 'denoise' or 'noise'"):
        activation_patching(tiny, ids, corrupted, metric, direction="both")
    with pytest.raises(ValueError, match="kind must be 'zero' or 'mean'"):
        head_ablation_sweep(tiny, ids, metric, kind="resample")
    with pytest.raises(ValueError, match="logit_diff: correct"):
        logit_diff(jnp.asarray([1, 2]), 3)
    assert jax.tree.leaves(metric)  # tokens are data


# ------------------------------------------------------------------ one scale (issue 12, item 4)


def test_activation_and_attribution_patching_on_one_scale(tiny, ids, corrupted, metric):
    """Both return metric(patched) - metric(corrupted) (exact / linear estimate), with the clean
    and corrupted metrics attached; normalised, clean = 1 and corrupted = 0."""
    m_clean = _metric_by_hand(forward(tiny, ids))
    m_corrupt = _metric_by_hand(forward(tiny, corrupted))
    gap = m_clean - m_corrupt
    for direction in ("denoise", "noise"):
        exact = activation_patching(tiny, ids, corrupted, metric, direction=direction)
        est = attribution_patching(tiny, ids, corrupted, metric, direction=direction)
        for r, method in ((exact, "activation"), (est, "attribution")):
            assert isinstance(r, PatchingResult) and r.method == method
            assert r.direction == direction and not r.normalized
            np.testing.assert_allclose(float(r.clean), m_clean, atol=1e-5)
            np.testing.assert_allclose(float(r.corrupted), m_corrupt, atol=1e-5)
            n = r.normalize()
            assert n.normalized and n.axes == r.axes
            np.testing.assert_allclose(np.asarray(n), np.asarray(r) / gap, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(n.unnormalize()), np.asarray(r), rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(np.asarray(n.patched), np.asarray(r.patched), rtol=1e-5,
                                       atol=1e-5)
        through = jax.jit(lambda r: r)(exact)  # a pytree: the metric values travel along
        assert isinstance(through, PatchingResult) and through.direction == direction
        np.testing.assert_allclose(float(through.clean), m_clean, atol=1e-5)
        kw = dict(direction=direction, normalize=True)
        np.testing.assert_allclose(
            np.asarray(activation_patching(tiny, ids, corrupted, metric, **kw)),
            np.asarray(exact) / gap, rtol=1e-5, atol=1e-6)
    # noise: the estimate is clean - corrupted plus the directional derivative of the clean run
    # toward the corrupted head (a central difference through a float-weighted patch).
    _, bad = run_with_cache(tiny, corrupted, names_filter="z")
    eps = 1e-2

    def f(layer, h, e):
        iv = _one_hot_patch(bad, "z", layer, h, weight=e)
        return _metric_by_hand(forward(tiny, ids, intervention=iv))

    for layer, h in [(0, 2), (1, 1)]:
        fd = (f(layer, h, eps) - f(layer, h, -eps)) / (2 * eps)
        np.testing.assert_allclose(float(est[layer, h]) - gap, fd, rtol=2e-2, atol=2e-4)
        # and the exact noise result is the patched clean run minus the corrupted metric
        np.testing.assert_allclose(float(exact[layer, h]), f(layer, h, 1.0) - m_corrupt,
                                   atol=1e-5)


def test_compare_patching_finds_the_layer_and_heads_that_disagree():
    """A planted trial: estimates right in rank everywhere, but layer 0's are large and of the
    wrong size, so Pearson is low, Spearman high, and Pearson without layer 0 high."""
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(6, 4))
    est = exact + 0.05 * rng.normal(size=(6, 4))
    exact[0] = [0.30, 0.25, 0.20, 0.15]
    est[0] = [-3.0, -3.5, -4.0, -4.5]
    cmp = compare_patching(Labelled(exact, ("layer", "head")), Labelled(est, ("layer", "head")),
                           k=3)
    np.testing.assert_allclose(cmp.pearson, np.corrcoef(exact.ravel(), est.ravel())[0, 1])
    rank = lambda x: np.argsort(np.argsort(x.ravel()))  # noqa: E731 - no ties here
    np.testing.assert_allclose(cmp.spearman, np.corrcoef(rank(exact), rank(est))[0, 1])
    for layer in range(6):
        keep = [i for i in range(6) if i != layer]
        np.testing.assert_allclose(float(cmp.pearson_without_layer[layer]),
                                   np.corrcoef(exact[keep].ravel(), est[keep].ravel())[0, 1])
    assert cmp.worst_layer == 0
    assert cmp.pearson < 0.5 and float(cmp.pearson_without_layer[0]) > 0.95
    assert [w for w, _, _ in cmp.flagged] == [(0, 3), (0, 2), (0, 1)]
    assert cmp.flagged[0][1:] == (0.15, -4.5)
    np.testing.assert_allclose(np.asarray(cmp.difference), est - exact)
    text = str(cmp)
    assert "without layer 0" in text and "L0H3: +0.1500 -> -4.5000" in text


def test_compare_patching_on_the_tiny_model(tiny, ids, corrupted, metric):
    exact = activation_patching(tiny, ids, corrupted, metric)
    est = attribution_patching(tiny, ids, corrupted, metric)
    cmp = compare_patching(exact, est)
    np.testing.assert_allclose(cmp.pearson, np.corrcoef(np.asarray(exact).ravel(),
                                                        np.asarray(est).ravel())[0, 1])
    assert len(cmp.flagged) == 5
    with pytest.raises(ValueError, match="normalized differs"):
        compare_patching(exact.normalize(), est)
    with pytest.raises(ValueError, match="differ"):
        compare_patching(exact, est[:, :2])

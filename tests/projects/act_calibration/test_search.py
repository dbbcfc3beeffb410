"""The head search: the layer-prefix-cached search gives the same per-head accuracies as the
uncached one, and (slow) both equal a brute-force loop (each prompt alone, unpadded, the full forward
with one head calibrated); pooled batches of several datasets score each row on its own
labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp.act import act_intervention
from projects.act_calibration import scoring, search
from tests.projects.act_calibration.tiny import tiny


@pytest.fixture(scope="module")
def setup():
    model, _ = tiny()
    rng = np.random.default_rng(0)
    lengths = [6, 12, 20, 6, 12, 20, 33, 40, 33, 40, 40]  # few lengths: few compiles
    prompts = [list(rng.integers(1, 256, n)) for n in lengths]
    labels = [[3, 17, 40] if i % 2 else [5, 9] for i in range(len(prompts))]  # two "datasets"
    gold = [int(rng.integers(len(x))) for x in labels]
    return model, prompts, labels, gold


def _brute_force(model, prompts, labels, gold, layers, heads):
    correct = np.full((model.config.n_layers, model.config.n_heads), -1)
    for layer in layers:
        for h in heads:
            iv = act_intervention(model, [(layer, h)], layers=(layer,))
            n = 0
            for p, lab, g in zip(prompts, labels, gold, strict=True):
                logits = np.asarray(model(jnp.asarray([p]), intervention=iv))[0, -1]
                n += int(np.argmax(logits[lab]) == g)
            correct[layer, h] = n
    base = sum(int(np.argmax(np.asarray(model(jnp.asarray([p])))[0, -1][lab]) == g)
               for p, lab, g in zip(prompts, labels, gold, strict=True))
    return correct, base


def test_cached_search_equals_uncached_and_brute_force(setup):
    model, prompts, labels, gold = setup
    items = search.calib_items(prompts, labels, gold, batch_tokens=128)
    assert len(items) >= 2 and any(len(it.batch.rows) < it.batch.ids.shape[0] for it in items)
    sc = scoring.Scorer(model)
    layers = (2, 3)
    cached = search.head_search(sc, items, layers, cached=True)
    plain = search.head_search(sc, items, layers, cached=False)
    np.testing.assert_array_equal(cached.correct, plain.correct)
    assert cached.heads == plain.heads and cached.baseline_correct == plain.baseline_correct
    assert cached.n == len(prompts)
    assert (cached.correct[[0, 1, 4]] == -1).all()  # layers not searched
    base = cached.baseline_correct
    kept = {(int(a), int(b)) for a, b in zip(*np.nonzero(cached.correct > base), strict=True)}
    assert set(cached.heads) == kept
    assert len(np.unique(cached.correct[2:4])) > 1  # heads differ: the comparison has teeth


@pytest.mark.slow
def test_search_equals_brute_force_loop(setup):
    """Batched, padded, pooled search = each prompt alone through ``model(ids, intervention)``."""
    model, prompts, labels, gold = setup
    items = search.calib_items(prompts, labels, gold, batch_tokens=128)
    res = search.head_search(scoring.Scorer(model), items, (2, 3), cached=True)
    want, base = _brute_force(model, prompts, labels, gold, (2, 3), range(4))
    np.testing.assert_array_equal(res.correct, want)
    assert res.baseline_correct == base


def test_cached_logp_equal_full_forward_logp(setup):
    """Per head, the log-probabilities themselves (not just the argmax) agree."""
    model, prompts, labels, gold = setup
    items = search.calib_items(prompts, labels, gold, batch_tokens=128)
    sc = scoring.Scorer(model)
    it = items[0]
    xs = sc.resid_stack(it.batch, [3])
    iv = act_intervention(model, [(3, 1)], layers=(3,), token_valid=it.batch.valid)
    a = sc.label_logp(it.batch, it.labels, iv, x=xs[3], start=3)
    b = sc.label_logp(it.batch, it.labels, iv)
    np.testing.assert_allclose(a, b, atol=1e-5)
    vanilla = sc.label_logp(it.batch, it.labels)
    # padded rows score at their own last token: row 0 alone, unpadded, through the model
    p0 = prompts[int(it.batch.rows[0])]
    assert len(p0) < it.batch.ids.shape[1]
    alone = np.asarray(jax.nn.log_softmax(model(jnp.asarray([p0]))[0, -1]))
    lab0 = it.labels[0][it.labels[0] >= 0]
    np.testing.assert_allclose(vanilla[0][:len(lab0)], alone[lab0], atol=1e-5)
    fin = np.isfinite(a)
    assert np.abs(a[fin] - vanilla[fin]).max() > 1e-4  # ACT did something
    with pytest.raises(ValueError, match="below the start layer"):
        sc.label_logp(it.batch, it.labels, iv, x=xs[3], start=4)

"""Learning the soft head selection on the shared loop, and the evaluation helpers, on a tiny
random model; checked against explicit per-prompt computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import forward
from projects.soft_injection import episodes, evaluate, selection
from tests.projects.soft_injection.fixtures import WORDS, CharTokenizer, tiny_model

L, H, D = 2, 4, 8


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model(), CharTokenizer()
    pairs = [(w, w[0].upper()) for w in WORDS[:8]]
    p = episodes.build(tok, pairs, pairs, 0, np.random.default_rng(0))
    v = np.asarray(jax.random.normal(jax.random.key(0), (L, H, D))) * 3
    return model, tok, p, v


def _explicit_loss(model, prompts, alpha, v):
    """Mean first-token cross-entropy, one unpadded prompt at a time through the plain
    forward, with the mixing applied by hand-built masks (no padding, no batching)."""
    from common.interp import Intervention

    out = []
    for ids, t in zip(prompts.tokens, prompts.target, strict=True):
        where = np.zeros((1, len(ids)), bool)
        where[0, -1] = True
        iv = Intervention(mix_a=jnp.asarray(alpha), mix_v=jnp.asarray(v),
                          mix_where=jnp.asarray(where))
        logits = np.asarray(forward(model, jnp.asarray([ids]), intervention=iv))[0, -1]
        out.append(-(logits[t] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()))
    return float(np.mean(out))


def test_learning_lowers_the_loss_and_keeps_the_best(setup, tmp_path):
    model, _, p, v = setup
    probs = [selection.Problem(f"t/seed{s}", v, p, p, s) for s in (0, 1)]
    sel = selection.learn_selection(model, probs, steps=30, val_every=10, keep_best=True,
                                    workdir=tmp_path / "a", progress=False)
    assert sel.alpha.shape == (2, L, H) and sel.val_steps == [10, 20, 30]
    start = _explicit_loss(model, p, np.full((L, H), 0.5), v)  # a = 0.5 at step 0
    assert sel.val_loss[-1].max() < start - 0.05
    np.testing.assert_allclose(sel.initial_val_loss, [start, start], rtol=1e-4)
    # the recorded validation loss of the final weights is the explicit loss
    for m in range(2):
        np.testing.assert_allclose(sel.val_loss[-1, m],
                                   _explicit_loss(model, p, sel.alpha_final[m], v), rtol=1e-4)
        best = int(np.argmin(sel.val_loss[:, m]))
        assert sel.best_step[m] == sel.val_steps[best]
        np.testing.assert_allclose(_explicit_loss(model, p, sel.alpha[m], v),
                                   sel.val_loss[best, m], rtol=1e-4)
    assert sel.train_loss.shape == (3, 2) and len(sel.log_steps) == 3


def test_prefix_caches_train_the_same_selection(setup, tmp_path):
    """Steps on the drawn prompts' cached prefixes (the last token alone) train the same
    weights as steps on the whole prompts: two groups of prompt lengths (in training and in
    validation), two problems each with its own draws, 20 Adam steps."""
    model, tok, p, v = setup
    long = episodes.build(tok, [(w * 3, w[0].upper()) for w in WORDS[:8]],
                          [(w * 3, w[0].upper()) for w in WORDS[:8]], 0,
                          np.random.default_rng(1))
    probs = [selection.Problem("t/seed0", v, p, p, 0),
             selection.Problem("u/seed3", v, long, long, 3)]
    runs = {mb: selection.learn_selection(model, probs, steps=20, val_every=10,
                                          workdir=tmp_path / f"mb{mb}", progress=False,
                                          prefix_cache_mb=mb) for mb in (0, 64)}
    assert selection.prefix_bytes(model.config, 40, 16) <= 64 * 2**20
    np.testing.assert_allclose(runs[64].alpha_final, runs[0].alpha_final, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs[64].val_loss, runs[0].val_loss, rtol=1e-4)
    assert np.abs(runs[0].alpha_final - 0.5).max() > 0.05  # the weights moved
    # validation in two tables (the problems' prompts pad to different lengths): each
    # problem's recorded loss of its final weights is the explicit one on its own prompts
    for m, prompts in enumerate((p, long)):
        np.testing.assert_allclose(runs[64].val_loss[-1, m], _explicit_loss(
            model, prompts, runs[64].alpha_final[m], v), rtol=1e-4)


def test_faithful_mode_returns_the_final_weights(setup, tmp_path):
    model, _, p, v = setup
    # validation on a different set than training: the best is not forced to be the last
    sel = selection.learn_selection(model, [selection.Problem("t/seed0", v, p, p, 0)], steps=20,
                                    val_every=10, keep_best=False, workdir=tmp_path / "b",
                                    progress=False)
    np.testing.assert_array_equal(sel.alpha, sel.alpha_final)
    with pytest.raises(ValueError, match="multiple of val_every"):
        selection.learn_selection(model, [selection.Problem("x", v, p, p, 0)], steps=15,
                                  val_every=10, workdir=tmp_path / "c")


def test_predictions_equal_one_prompt_at_a_time(setup):
    model, _, p, v = setup
    a = np.asarray(jax.nn.sigmoid(jax.random.normal(jax.random.key(4), (L, H))))
    got = evaluate.predict(model, p, batch_size=3)
    got_si = evaluate.predict(model, p, alpha=a, v=v, batch_size=3)
    from common.interp import Intervention

    for i, ids in enumerate(p.tokens):
        assert got[i] == int(np.argmax(np.asarray(forward(model, jnp.asarray([ids])))[0, -1]))
        where = np.zeros((1, len(ids)), bool)
        where[0, -1] = True
        iv = Intervention(mix_a=jnp.asarray(a), mix_v=jnp.asarray(v), mix_where=jnp.asarray(where))
        want = int(np.argmax(np.asarray(forward(model, jnp.asarray([ids]), intervention=iv))[0, -1]))
        assert got_si[i] == want
    assert evaluate.accuracy(model, p) == float(np.mean(got == p.target))
    assert not np.array_equal(got, got_si)


def test_kv_bytes(setup):
    model = setup[0]
    # 2 (k and v) x layers x kv heads x d_head x 4 bytes per token
    assert evaluate.kv_cache_bytes(model.config, 10) == 2 * L * 2 * D * 4 * 10


def test_keep_best_returns_the_best_validation_not_the_last(setup, tmp_path):
    """Validation on other answers than training: its loss rises as training proceeds, so the
    best validation comes before the last step and ``keep_best`` must return it."""
    model, _, p, v = setup
    other = episodes.Prompts(p.tokens, np.full_like(p.target, ord("z")), p.shots)
    sel = selection.learn_selection(model, [selection.Problem("t/seed0", v, p, other, 0)],
                                    steps=30, val_every=10, keep_best=True,
                                    workdir=tmp_path / "d", progress=False)
    assert sel.best_step[0] < 30 and sel.val_loss[-1, 0] > sel.val_loss.min()
    assert not np.allclose(sel.alpha, sel.alpha_final)
    best = int(np.argmin(sel.val_loss[:, 0]))
    np.testing.assert_allclose(_explicit_loss(model, other, sel.alpha[0], v),
                               sel.val_loss[best, 0], rtol=1e-4)

"""Resuming the selection training after a crash (bit for bit an uninterrupted run), and the
task-agnostic selection (one ``a``, each prompt injected with its own task's embedding)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from common.rundir import MetricsWriter
from projects.soft_injection import episodes, selection
from tests.projects.soft_injection.fixtures import WORDS, CharTokenizer, tiny_model
from tests.projects.soft_injection.test_selection import _explicit_loss

L, H, D = 2, 4, 8


class Killed(RuntimeError):
    pass


class CrashAt(MetricsWriter):
    """A metrics writer that dies at its first row of step ``at`` or later (before that
    step's checkpoint and validation: the loop logs first)."""

    def __init__(self, path, at: int):
        super().__init__(path)
        self.at = at

    def write(self, step, **metrics):
        if step >= self.at:
            raise Killed(f"killed at step {step}")
        super().write(step, **metrics)


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model(), CharTokenizer()
    pairs = [(w, w[0].upper()) for w in WORDS[:8]]
    other = [(w, w[-1]) for w in WORDS[8:16]]
    p = episodes.build(tok, pairs, pairs, 0, np.random.default_rng(0))
    q = episodes.build(tok, other, other, 0, np.random.default_rng(1))
    v = np.asarray(jax.random.normal(jax.random.key(0), (L, H, D))) * 3
    w = np.asarray(jax.random.normal(jax.random.key(1), (L, H, D))) * 3
    return model, p, q, v, w


def _problems(p, q, v, w):
    return [selection.Problem("a/seed0", v, p, p, 0), selection.Problem("b/seed0", w, q, q, 0)]


def _same(x, y):
    np.testing.assert_array_equal(x.alpha, y.alpha)
    np.testing.assert_array_equal(x.alpha_final, y.alpha_final)
    np.testing.assert_array_equal(x.val_loss, y.val_loss)
    np.testing.assert_array_equal(x.best_step, y.best_step)


def _kill_and_resume(model, problems, wd, kw, drop_last_validation):
    with pytest.raises(Killed):
        selection.learn_selection(model, problems, workdir=wd,
                                  metrics=CrashAt(wd / "metrics.jsonl", 30), **kw)
    assert (wd / "checkpoints" / "20").is_dir() and not (wd / "checkpoints" / "30").exists()
    if drop_last_validation:  # died after the step-20 checkpoint, before its validation
        (wd / "selection" / "val_0000020.npz").unlink()
    return selection.learn_selection(model, problems, workdir=wd, **kw)


KW = dict(steps=40, val_every=10, keep_best=True, progress=False)


def test_a_killed_run_resumes_to_the_uninterrupted_selection_bit_for_bit(setup, tmp_path):
    model, p, q, v, w = setup
    full = selection.learn_selection(model, _problems(p, q, v, w), workdir=tmp_path / "full",
                                     **KW)
    assert full.resumed_from == 0
    again = _kill_and_resume(model, _problems(p, q, v, w), tmp_path / "b", KW, True)
    assert again.resumed_from == 20  # continued, not started over
    _same(again, full)


@pytest.mark.slow
def test_resume_without_lost_validation_finished_rerun_and_refusal(setup, tmp_path):
    model, p, q, v, w = setup
    full = selection.learn_selection(model, _problems(p, q, v, w), workdir=tmp_path / "full",
                                     **KW)
    again = _kill_and_resume(model, _problems(p, q, v, w), tmp_path / "a", KW, False)
    assert again.resumed_from == 20
    _same(again, full)
    # a finished run's rerun takes no step and gives the same selection
    done = selection.learn_selection(model, _problems(p, q, v, w), workdir=tmp_path / "full",
                                     **KW)
    assert done.resumed_from == 40
    _same(done, full)
    # other problems in the same folder: refused, not resumed
    with pytest.raises(ValueError, match="different run"):
        selection.learn_selection(model, _problems(p, q, w, v), workdir=tmp_path / "full", **KW)


def test_task_agnostic_selection_injects_each_prompt_with_its_own_task(setup, tmp_path):
    model, p, q, v, w = setup
    both = episodes.Prompts(p.tokens + q.tokens, np.concatenate([p.target, q.target]),
                            np.concatenate([p.shots, q.shots]), 0, p.answers + q.answers)
    task = np.asarray([0] * len(p) + [1] * len(q))
    agn = selection.Problem("agnostic/seed0", np.stack([v, w]), both, both, 0, task, task)
    sel = selection.learn_selection(model, [agn, *_problems(p, q, v, w)], steps=20,
                                    val_every=10, progress=False, workdir=tmp_path)
    a = sel.alpha_final[0]
    want = (len(p) * _explicit_loss(model, p, a, v) + len(q) * _explicit_loss(model, q, a, w)) / (
        len(p) + len(q))
    np.testing.assert_allclose(sel.val_loss[-1, 0], want, rtol=1e-4)
    np.testing.assert_allclose(sel.initial_val_loss[0], (
        len(p) * _explicit_loss(model, p, np.full((L, H), 0.5), v)
        + len(q) * _explicit_loss(model, q, np.full((L, H), 0.5), w)) / (len(p) + len(q)),
        rtol=1e-4)
    assert sel.val_loss[-1, 0] < sel.initial_val_loss[0]
    with pytest.raises(ValueError, match="several embeddings need train_task"):
        selection.Problem("x", np.stack([v, w]), both, both, 0).task_of("train")

"""Exact match (greedy decoding with the edit in the prefill, the official normalisation) and
the function-vector / task-vector baselines, on a tiny random model against brute-force loops
of full forwards (no KV cache, no padding, no batching)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import Intervention, forward
from projects.soft_injection import baselines, episodes, evaluate, prompts
from tests.projects.soft_injection.fixtures import WORDS, CharTokenizer, tiny_model

L, H, D = 2, 4, 8


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model(), CharTokenizer()
    pairs = [(w, w[0].upper()) for w in WORDS[:6]]
    p = episodes.build(tok, pairs, pairs, 0, np.random.default_rng(0))
    v = np.asarray(jax.random.normal(jax.random.key(0), (L, H, D))) * 3
    a = np.asarray(jax.nn.sigmoid(jax.random.normal(jax.random.key(4), (L, H)) * 2))
    return model, tok, p, v, a


def _mix(a, v, n, pos):
    where = np.zeros((1, n), bool)
    where[0, pos] = True
    return Intervention(mix_a=jnp.asarray(a), mix_v=jnp.asarray(v), mix_where=jnp.asarray(where))


def test_official_normalisation_and_prefix_match():
    em = prompts.exact_match
    assert em(" Saint Helena pound\nQ: x", " St. Helena pound", "country-currency")
    assert em("paris (france)", " Paris", "country-capital")  # case folded, cut at "("
    assert not em("paris", " Paris", "capitalize")  # capitalize/lowercase tasks keep case
    assert em("Paris", " Paris", "capitalize_first_letter")
    assert em("c", " C", "next_capital_letter")  # "capital" is not "capitalize"
    assert em("Parisian", " Paris", "country-capital")  # a prefix match, as the official code
    assert not em("Par", " Paris", "country-capital")
    assert em("\n Paris", " Paris", "country-capital")
    assert not em("x\nParis", " Paris", "country-capital")  # only the first line counts
    assert em("5 apples", "5", "word_length")


def test_exact_match_equals_a_brute_force_greedy_loop(setup):
    """Soft injection's exact match: each prompt alone, recomputed in full at every step with
    the mixing at the prompt's last token only, decoded and normalised by hand."""
    model, tok, p, v, a = setup
    n_new = 6
    got = evaluate.continuations(model, tok, p, alpha=a, v=v, batch_size=4,
                                 max_new_tokens=n_new)
    clean = evaluate.continuations(model, tok, p, batch_size=4, max_new_tokens=n_new)
    for i, ids in enumerate(p.tokens):
        seq = list(ids)
        for _ in range(n_new):
            logits = forward(model, jnp.asarray([seq]),
                             intervention=_mix(a, v, len(seq), len(ids) - 1))
            seq.append(int(np.argmax(np.asarray(logits)[0, -1])))
        assert got[i] == "".join(chr(t) for t in seq[len(ids):])
    assert got != clean
    want = np.mean([prompts.exact_match(g, ans, "t") for g, ans in zip(got, p.answers,
                                                                        strict=True)])
    assert evaluate.exact_match_accuracy(model, tok, p, "t", alpha=a, v=v, batch_size=4,
                                         max_new_tokens=n_new) == want
    assert p.answers == tuple(" " + w[0].upper() for w in WORDS[:6])


def test_indirect_effects_equal_full_patched_forwards(setup):
    """The cached last-token step gives each head's indirect effect as a full forward whose
    head output is set to t at the last token (mixing with a = 1 at that head only)."""
    model, tok, p, v, _ = setup
    pairs = [(w, w[0].upper()) for w in WORDS[:10]]
    bad = episodes.build(tok, pairs[:3], pairs, 3, np.random.default_rng(1), shuffle_labels=True)
    t_rows = np.stack([v, v * 0.5, -v])
    got = baselines.indirect_effects(model, bad, t_rows)
    np.testing.assert_allclose(baselines.indirect_effects(model, bad, t_rows, max_rows=7), got,
                               atol=1e-6)  # 2 heads per call, the last call padded
    np.testing.assert_allclose(baselines.indirect_effects(model, bad, t_rows,
                                                          max_cache_bytes=1), got,
                               atol=1e-6)  # one head per call: the cache is not copied

    def prob(ids, tgt, iv):
        lg = np.asarray(forward(model, jnp.asarray([ids]), intervention=iv))[0, -1]
        e = np.exp(lg - lg.max())
        return e[tgt] / e.sum()

    for layer in range(L):
        for h in range(H):
            d = []
            for i, ids in enumerate(bad.tokens):
                a1 = np.zeros((L, H))
                a1[layer, h] = 1.0
                d.append(prob(ids, bad.target[i], _mix(a1, t_rows[i], len(ids), len(ids) - 1))
                         - prob(ids, bad.target[i], None))
            np.testing.assert_allclose(got[layer, h], np.mean(d), atol=1e-5)
    assert baselines.top_heads(got, 3)[0] == np.unravel_index(np.argmax(got), got.shape)


def test_shuffled_labels_keep_inputs_and_query():
    tok = CharTokenizer()
    pairs = [(w, w.upper()) for w in WORDS[:12]]
    bad = episodes.build(tok, pairs[:6], pairs, 5, np.random.default_rng(3), shuffle_labels=True)
    moved = 0
    for i, ids in enumerate(bad.tokens):
        blocks = tok.decode(ids).split("\n\n")
        demos = [b.split("\nA: ") for b in blocks[:-1]]
        ins, outs = [d[0][3:] for d in demos], [d[1] for d in demos]
        assert sorted(outs) == sorted(x.upper() for x in ins)  # the same labels, permuted
        moved += any(o != x.upper() for x, o in zip(ins, outs, strict=True))
        assert blocks[-1] == f"Q: {WORDS[i]}\nA:" and bad.answers[i] == " " + WORDS[i].upper()
    assert moved >= 4


def test_function_vector_and_task_vector_settings_equal_hand_edits(setup):
    model, _, p, v, _ = setup
    o = np.asarray(model.blocks.attn.o_kernel[...])  # [L, H, d_head, d_model]
    heads = [(1, 2), (0, 3)]
    zflat = np.zeros((L, H * D))
    for layer, h in heads:
        zflat[layer, h * D:(h + 1) * D] = v[layer, h]
    want_fv = sum(zflat[layer] @ o[layer].reshape(H * D, -1) for layer in range(L))
    fv = baselines.function_vector(model, v, heads)
    np.testing.assert_allclose(fv, want_fv, rtol=1e-5, atol=1e-5)
    resid = np.asarray(jax.random.normal(jax.random.key(9), (L, model.config.d_model))) * 3
    clean = evaluate.predict(model, p, batch_size=4)
    for layer in range(L - 1):  # resid_post of `layer` is resid_pre of the next one
        for name, setting in (("fv", baselines.fv_setting(fv * 0.5, layer)),
                              ("tv", baselines.tv_setting(resid, layer))):
            got = evaluate.predict(model, p, setting=setting, batch_size=4)
            moved = replaced = 0
            for i, ids in enumerate(p.tokens):
                x = np.asarray(model.resid_pre(jnp.asarray([ids]), layer + 1)).copy()
                x[0, -1] = x[0, -1] + fv * 0.5 if name == "fv" else resid[layer]
                want = int(np.argmax(np.asarray(model.forward_from(jnp.asarray(x),
                                                                   layer + 1))[0, -1]))
                assert got[i] == want, (name, layer, i)
                x[0, -1] = fv * 0.5 if name == "fv" else x[0, -1]  # replacing, not adding
                other = int(np.argmax(np.asarray(model.forward_from(jnp.asarray(x),
                                                                    layer + 1))[0, -1]))
                replaced += other != want
                moved += got[i] != clean[i]
            assert moved and (name == "tv" or replaced), name
    # validation answers that the layer-1 task vector gives: layer 1 must be chosen
    target = evaluate.predict(model, p, setting=baselines.tv_setting(resid, 1), batch_size=4)
    valid = episodes.Prompts(p.tokens, target, p.shots, 0, p.answers)
    best, accs = baselines.choose_tv_layer(model, valid, resid)
    assert best == 1 and accs[1] == 1.0 and accs[0] < 1.0
    for layer in range(L):
        assert accs[layer] == evaluate.accuracy(model, valid, setting=baselines.tv_setting(
            resid, layer), batch_size=4)


def test_zero_shot_edit_parts_equal_the_separate_settings(setup):
    """The shared zero-shot structure: neutral parts change nothing bit for bit; each part
    alone predicts as its own (brute-force checked) setting; score's first token is the
    forward's argmax."""
    model, tok, p, v, a = setup
    shape = (L, H, D, model.config.d_model)
    clean = evaluate.predict(model, p, batch_size=4)
    from common.interp.task_embedding import logits_at, pad_right

    ids, last = pad_right(p.tokens[:4])
    plain = np.asarray(logits_at(model, ids, last))
    none = np.asarray(logits_at(model, ids, last, intervention=evaluate.zero_shot_edit(shape)(
        last, ids.shape[1])))
    np.testing.assert_array_equal(none, plain)
    fv = np.asarray(jax.random.normal(jax.random.key(5), (model.config.d_model,)))
    for part, alone in ((dict(alpha=a, v=v), evaluate.mix_setting(a, v)),
                        (dict(add=(fv, 0)), baselines.fv_setting(fv, 0)),
                        (dict(replace=(fv, 1)), baselines.tv_setting(np.stack([fv, fv]), 1))):
        got = evaluate.predict(model, p, setting=evaluate.zero_shot_edit(shape, **part),
                               batch_size=4)
        np.testing.assert_array_equal(got, evaluate.predict(model, p, setting=alone,
                                                            batch_size=4))
    assert not np.array_equal(evaluate.predict(model, p, setting=evaluate.zero_shot_edit(
        shape, alpha=a, v=v), batch_size=4), clean)
    ft, em = evaluate.score(model, tok, p, "t", alpha=a, v=v, batch_size=4, max_new_tokens=3)
    assert ft == evaluate.accuracy(model, p, alpha=a, v=v, batch_size=4)
    assert em == evaluate.exact_match_accuracy(model, tok, p, "t", alpha=a, v=v, batch_size=4,
                                               max_new_tokens=3)

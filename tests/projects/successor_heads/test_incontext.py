"""List prompts (ordered and shuffled twins) and the DLA decomposition on a tiny model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import W_E, direct_logit_attribution, final_norm_linear, run_with_cache
from projects.successor_heads import incontext, tasks
from tests.projects.successor_heads.tiny import ToyTokenizer, build, random_tensors, tiny_config

TOK = ToyTokenizer()
CFG = tiny_config(len(TOK))


def _days():
    return tasks.build_classes(TOK, ("days",), bare=())[0][0]


def test_list_prompts_and_their_shuffled_twins():
    days = _days()
    lp = incontext.list_prompts(TOK, days, n_items=4, max_prompts=50, seed=1)
    assert len(lp) == 7 and lp.n_items == 4  # cyclic: a run of 5 starts at every day
    head = TOK.encode("List:")
    comma = TOK.encode(",")[0]
    nxt = {days.token_ids[i]: days.token_ids[j] for i, j in days.pairs}
    for ids, shuf, ans, last in zip(lp.ids, lp.shuffled, lp.answer, lp.last, strict=True):
        assert list(ids[:len(head)]) == head
        items, items_s = ids[len(head)::2], shuf[len(head)::2]
        assert (ids[len(head) + 1::2] == comma).all() and (shuf[len(head) + 1::2] == comma).all()
        assert all(nxt[a] == b for a, b in zip(items, items[1:], strict=False))
        assert nxt[items[-1]] == ans and items[-1] == last
        assert sorted(items) == sorted(items_s) and items_s[-1] != items[-1]
        assert not any(nxt[a] == b for a, b in zip(items_s, items_s[1:], strict=False))
    short = tasks.make_class(TOK, "three", ["one", "two", "three"])
    assert incontext.list_prompts(TOK, short) is None  # no run of 4


def test_head_mlp_and_embedding_dla_sum_to_the_logit_difference():
    """With the final-norm scale frozen, the direct effects of every head, every MLP and the
    token embedding add up to logit(answer) - logit(last) at the last position."""
    model = build(CFG, random_tensors(CFG, seed=11))
    lp = incontext.list_prompts(TOK, _days(), n_items=3, max_prompts=4)
    ids, ans, last = jnp.asarray(lp.ids), jnp.asarray(lp.answer), jnp.asarray(lp.last)
    heads = np.asarray(direct_logit_attribution(model, ids, ans, last))  # [L, H]
    mlps = incontext.mlp_dla(model, lp.ids, lp.answer, lp.last)  # [L]
    _, cache = run_with_cache(model, ids, names_filter=("resid_post",))
    final = cache["resid_post", CFG.n_layers - 1][:, -1]
    wu = W_E(model).values.T
    direction = (wu[:, ans] - wu[:, last]).T
    emb = final_norm_linear(model, W_E(model).values[ids[:, -1]], final)
    emb_dla = float(jnp.mean(jnp.sum(emb * direction, -1)))
    lg = np.asarray(model(ids))[:, -1]
    want = float(np.mean(lg[np.arange(len(lp)), lp.answer] - lg[np.arange(len(lp)), lp.last]))
    assert heads.sum() + mlps.sum() + emb_dla == pytest.approx(want, abs=1e-4)
    assert np.abs(mlps).max() > 1e-3 and np.abs(heads).max() > 1e-3


def test_nothing_right_is_a_clear_error():
    model = build(CFG, random_tensors(CFG, seed=12))
    lp = incontext.list_prompts(TOK, _days())
    ev = incontext.evaluate(model, lp)
    if ev["top1"].any():  # a random tiny model is almost never right; skip if it is
        pytest.skip("the random model happened to continue a list")
    with pytest.raises(ValueError, match="no list prompt right at top-1"):
        incontext.run_in_context(model, TOK, [_days()], patch=False)


def test_contextual_ov_logits_at_layer0_by_hand():
    """At layer 0 a head's value at an item is norm1(E[t]) W_V, whatever the context: the
    in-context OV logits of layer 0 equal the hand computation from the HF tensors."""
    from projects.successor_heads import succession
    from tests.projects.successor_heads.tiny import w_o, w_v

    t = random_tensors(CFG, seed=13)
    model = build(CFG, t)
    classes = tasks.build_classes(TOK, ("days", "number_words"), bare=())[0]
    table = succession.pair_table(classes)
    got = incontext.contextual_ov_logits(model, TOK, table, classes)
    assert got.shape == (CFG.n_layers, CFG.n_heads, len(table.tokens), len(table.tokens))
    assert np.isfinite(got).all()  # every class token has a prompt
    E = t["model.embed_tokens.weight"]
    g1 = t["model.layers.0.input_layernorm.weight"]
    for h in range(CFG.n_heads):
        for r, tok_id in enumerate(table.tokens):
            e = E[tok_id].astype(np.float64)
            n1 = e / np.sqrt((e * e).mean() + CFG.norm_eps) * g1
            out = n1 @ w_v(t, CFG, 0, h // 2) @ w_o(t, CFG, 0, h)
            want = np.asarray(model.unembed(jnp.asarray(out, jnp.float32)))[table.tokens]
            np.testing.assert_allclose(got[0, h, r], want, rtol=1e-4,
                                       atol=1e-4 * np.abs(want).max())

"""Succession scores: the batched jitted score against a brute-force per-head, per-token loop;
planted successor and copy heads; GQA heads reading their own KV group; random heads at chance;
ordinal classes through a tokenizer with dropped items reported."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import W_O, W_V, effective_embedding
from projects.successor_heads import succession as S
from projects.successor_heads import tasks
from tests.projects.successor_heads.tiny import (
    ToyTokenizer,
    build,
    random_tensors,
    set_o,
    set_v,
    tiny_config,
    w_o,
    w_v,
)

TOK = ToyTokenizer()
CFG = tiny_config(len(TOK))
CLASSES = ("days", "number_words", "day_prefixes", "month_prefixes")


def _classes():
    return tasks.build_classes(TOK, CLASSES, bare=())


# ---------------------------------------------------------------- classes through a tokenizer

def test_classes_keep_single_tokens_and_report_drops():
    classes, gone = _classes()
    by = {c.name: c for c in classes}
    assert list(by) == ["days", "number_words", "month_prefixes"]
    days = by["days"]
    assert days.items[0] == " Monday" and len(days.items) == 7 and days.cyclic
    assert (6, 0) in days.pairs and len(days.pairs) == 7  # Sunday -> Monday
    nw = by["number_words"]
    assert nw.items == (" one", " two", " three", " four", " five")
    assert nw.pairs == ((0, 1), (1, 2), (2, 3), (3, 4))
    assert len(nw.dropped) == 15 and nw.dropped_pairs == 15
    assert nw.dropped[0][0] == " six" and nw.dropped[0][1].startswith("4 tokens")
    mp = by["month_prefixes"]  # Jan Feb Mar kept: Mar -> Apr and Dec -> Jan lost
    assert mp.pairs == ((0, 1), (1, 2)) and mp.dropped_pairs == 10
    assert [d.name for d in gone] == ["day_prefixes"]
    assert "0 single-token item(s)" in gone[0].reason
    info = tasks.describe(classes, gone)
    assert info["classes"]["number_words"]["dropped_items"] == 15
    assert "day_prefixes" in info["dropped_classes"]


def test_bad_classes_are_clear_errors():
    with pytest.raises(tasks.ClassError, match="needs at least two"):
        tasks.make_class(TOK, "solo", ["Monday", "Blursday"])
    with pytest.raises(tasks.ClassError, match="unknown ordinal class"):
        tasks.build_classes(TOK, ["weekdays"])
    with pytest.raises(tasks.ClassError, match="no ordinal class"):
        tasks.build_classes(TOK, ["day_prefixes"], bare=())
    # two single tokens that are not neighbours: no pair survives
    with pytest.raises(tasks.ClassError, match="no .item, successor. pair"):
        tasks.make_class(TOK, "gaps", ["Monday", "x-x", "Wednesday"])


def test_class_layout_needs_pairs_grouped_by_class():
    import dataclasses

    table = S.pair_table(_classes()[0])
    lay = table.layout()
    assert sum(lay.sizes) == int(table.cand.sum()) and len(lay.order) % 16 == 0
    assert sum(lay.n_pairs) == len(table.src) and sum(lay.n_items) == len(table.item)
    shuffled = dataclasses.replace(table, src=table.src[::-1], tgt=table.tgt[::-1],
                                   cls=table.cls[::-1])
    with pytest.raises(ValueError, match="grouped by class"):
        shuffled.layout()


def test_model_without_mlp0_errors_or_falls_back():
    cfg = types.SimpleNamespace(d_mlp=0)
    with pytest.raises(S.NoMLP0Error, match="needs an MLP in layer 0"):
        S.resolve_embed_mode(cfg, "mlp0_only")
    assert S.resolve_embed_mode(cfg, "mlp0_only", fallback="raw_embed") == "raw_embed"
    assert S.resolve_embed_mode(types.SimpleNamespace(d_mlp=8, mlp_layers=[1]), "block0",
                                "raw_embed") == "raw_embed"
    with pytest.raises(ValueError, match="embed_mode must be one of"):
        S.resolve_embed_mode(CFG, "mlp1")


# ---------------------------------------------------------------- brute force

def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _silu(x):
    return x / (1 + np.exp(-x))


def _mlp0(t, x):
    p = "model.layers.0."
    h = _rms(x, t[p + "post_attention_layernorm.weight"], CFG.norm_eps)
    a = _silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)
    return a @ t[p + "mlp.down_proj.weight"].T


def _embed_by_hand(t, tok, mode):
    """Effective embedding of one token from the HF tensors, in float64 numpy."""
    t64 = {k: v.astype(np.float64) for k, v in t.items()}
    e = t64["model.embed_tokens.weight"][tok]
    if mode == "raw_embed":
        return e
    if mode == "mlp0_only":
        return _mlp0(t64, e)
    if mode == "resid_plus_mlp0":
        return e + _mlp0(t64, e)
    # block0: a one-token sequence attends to itself: attention = sum_h norm1(e) V_g(h) O_h
    n1 = _rms(e, t64["model.layers.0.input_layernorm.weight"], CFG.norm_eps)
    g = CFG.n_heads // CFG.n_kv_heads
    attn = sum(n1 @ w_v(t64, CFG, 0, h // g) @ w_o(t64, CFG, 0, h) for h in range(CFG.n_heads))
    mid = e + attn
    return mid + _mlp0(t64, mid)


@pytest.mark.parametrize("mode", S.EMBED_MODES)
@pytest.mark.parametrize("final_norm", [True, False])
def test_batched_score_equals_per_head_per_token_loop(mode, final_norm):
    t = random_tensors(CFG, seed=3)
    model = build(CFG, t)
    classes, _ = _classes()
    got = S.score_heads(model, classes, embed_mode=mode, final_norm=final_norm)
    table = got.table
    E = t["model.embed_tokens.weight"].astype(np.float64)
    g = CFG.n_heads // CFG.n_kv_heads
    hits = np.zeros((CFG.n_layers, CFG.n_heads, len(table.src)), bool)
    logits_all = np.asarray(S.ov_logits(model, table.tokens, embed_mode=mode,
                                        final_norm=final_norm).values)
    for layer in range(CFG.n_layers):
        for h in range(CFG.n_heads):
            ov = (w_v(t, CFG, layer, h // g).astype(np.float64)
                  @ w_o(t, CFG, layer, h).astype(np.float64))
            for p, (s, tg, c) in enumerate(zip(table.src, table.tgt, table.cls, strict=True)):
                out = _embed_by_hand(t, int(table.tokens[s]), mode) @ ov  # [d_model]
                if final_norm:
                    logits = np.asarray(model.unembed(jnp.asarray(out, jnp.float32)))
                else:
                    logits = E @ out
                cands = table.tokens[table.cand[c]]
                hits[layer, h, p] = table.tokens[tg] == cands[np.argmax(logits[cands])]
                np.testing.assert_allclose(logits_all[layer, h, s], logits[table.tokens],
                                           rtol=2e-4, atol=2e-4 * np.abs(logits).max())
    np.testing.assert_array_equal(got.hits, hits)
    pooled = table.pooled[table.cls]
    np.testing.assert_allclose(np.asarray(got.succession), hits[..., pooled].mean(-1),
                               atol=1e-6)


@pytest.mark.parametrize("final_norm", [True, False])
def test_other_backends_program_equals_the_cpu_one(final_norm):
    """The program other backends compile (``A`` batched on the stacked ``W_V``, sharding
    preserved) scores every pair as the CPU one (``A`` as one product on the transposed
    ``W_V``), which the loop above checks."""
    model = build(CFG, random_tensors(CFG, seed=4))
    classes, _ = _classes()
    table, _, args = S._score_call(model, classes, "mlp0_only", final_norm)
    cpu, other = (S._head_scores(S._score_heads_jit[k](*args), table) for k in ("cpu", "other"))
    np.testing.assert_array_equal(other.hits, cpu.hits)
    np.testing.assert_array_equal(np.asarray(other.copy), np.asarray(cpu.copy))
    assert 0 < np.asarray(cpu.hits).mean() < 1  # not a degenerate comparison


def test_embed_modes_match_the_hand_computation():
    t = random_tensors(CFG, seed=4)
    model = build(CFG, t)
    toks = np.array([0, 5, 9])
    for mode in S.EMBED_MODES:
        got = np.asarray(S.effective_embed(model, toks, mode))
        want = np.stack([_embed_by_hand(t, k, mode) for k in toks])
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    # resid_plus_mlp0 is the core's effective embedding ("mlp0")
    np.testing.assert_array_equal(np.asarray(S.effective_embed(model, toks, "resid_plus_mlp0")),
                                  np.asarray(effective_embedding(model, toks, mode="mlp0")))


# ---------------------------------------------------------------- planted heads

def _plant(t, model, table, layer, kv_head, heads, kind):
    """Set the V of ``kv_head`` and the O of ``heads`` (layer ``layer``) so that each head's
    effective OV logits (mlp0_only, final norm) put the successor (``kind="succ"``) or the
    token itself (``"copy"``) first, exactly: V sends row k of the inputs to e_k, O sends e_k to
    a vector whose normed logits over the class tokens are one-hot."""
    if kind == "succ":
        rows, outs = table.src, table.tgt
    else:
        rows, outs = table.item, table.item
    toks = table.tokens
    x = np.asarray(S.effective_embed(model, toks, "mlp0_only"), np.float64)[rows]  # [P, d]
    uniq, first = np.unique(rows, return_index=True)
    x, outs = x[first], outs[first]
    D = CFG.d_head
    assert len(uniq) <= D
    wv = np.zeros((CFG.d_model, D))
    wv[:, :len(uniq)] = np.linalg.pinv(x)  # x @ wv = [I | 0]
    gamma = t["model.norm.weight"].astype(np.float64)
    wu = t["model.embed_tokens.weight"].astype(np.float64)[toks].T * gamma[:, None]  # [d, m]
    target = np.zeros((len(uniq), len(toks)))
    target[np.arange(len(uniq)), outs] = 1.0
    wo = np.zeros((D, CFG.d_model))
    wo[:len(uniq)] = target @ np.linalg.pinv(wu)  # (wo ⊙ γ) · W_U = one-hot
    set_v(t, CFG, layer, kv_head, wv.astype(np.float32))
    for h in heads:
        set_o(t, CFG, layer, h, wo.astype(np.float32))


def test_planted_successor_head_scores_one_and_ranks_first():
    t = random_tensors(CFG, seed=5)
    classes, _ = _classes()
    table = S.pair_table(classes)
    _plant(t, build(CFG, t), table, layer=1, kv_head=1, heads=[2], kind="succ")
    sc = S.score_heads(build(CFG, t), classes)
    assert float(sc.succession[1, 2]) == 1.0
    assert sc.top(1) == [(1, 2, 1.0)]
    assert all(v == 1.0 for v in sc.breakdown(1, 2).values())
    assert float(sc.copy[1, 2]) < 0.2 and float(sc.predecessor[1, 2]) < 0.2
    others = np.delete(np.asarray(sc.succession).ravel(), 1 * CFG.n_heads + 2)
    assert others.max() < 0.6


def test_planted_copy_head_is_a_copy_head_not_a_successor_head():
    t = random_tensors(CFG, seed=6)
    classes, _ = _classes()
    table = S.pair_table(classes)
    _plant(t, build(CFG, t), table, layer=0, kv_head=0, heads=[1], kind="copy")
    sc = S.score_heads(build(CFG, t), classes)
    assert float(sc.copy[0, 1]) == 1.0 and sc.top(1, "copy") == [(0, 1, 1.0)]
    assert float(sc.succession[0, 1]) == 0.0


def test_gqa_heads_read_their_own_kv_group():
    """V planted in KV head 1 and the successor O in every query head: only the query heads of
    group 1 (2 and 3; group size 2) score 1; heads 0 and 1 read KV head 0's random V."""
    t = random_tensors(CFG, seed=7)
    classes, _ = _classes()
    table = S.pair_table(classes)
    _plant(t, build(CFG, t), table, layer=1, kv_head=1, heads=[0, 1, 2, 3], kind="succ")
    model = build(CFG, t)
    sc = np.asarray(S.score_heads(model, classes).succession)
    np.testing.assert_array_equal(sc[1, 2:], [1.0, 1.0])
    assert sc[1, :2].max() < 0.6
    wv = np.asarray(W_V(model).values)
    for h in range(CFG.n_heads):
        np.testing.assert_array_equal(wv[1, h], w_v(t, CFG, 1, h // 2))


def test_random_heads_score_near_chance():
    tok_classes = tasks.build_classes(TOK, ("letters", "numbers"), bare=("letters", "numbers"))[0]
    bare = [c for c in tok_classes if c.name.endswith("/bare")]
    assert [len(c.items) for c in bare] == [26, 10]  # A..Z; 0..9
    table = S.pair_table(bare)
    assert table.chance == pytest.approx((9 / 10 + 25 / 26) / 34)
    cfg = tiny_config(len(TOK), n_layers=4)
    scores = [np.asarray(S.score_heads(build(cfg, random_tensors(cfg, seed=s)), bare).succession)
              for s in range(4)]
    mean = float(np.mean(scores))  # 4 models x 16 heads x 34 pairs
    assert abs(mean - table.chance) < 0.03, (mean, table.chance)
    assert max(float(np.max(s)) for s in scores) < 0.4


def test_held_out_classes_are_scored_but_not_pooled():
    t = random_tensors(CFG, seed=8)
    classes, _ = _classes()
    held = [tasks.OrdinalClass(**{**c.__dict__, "held_out": c.name == "days"}) for c in classes]
    sc = S.score_heads(build(CFG, t), held)
    table = sc.table
    keep = table.names.index("days")
    pooled = sc.hits[..., table.cls != keep].mean(-1)
    np.testing.assert_allclose(np.asarray(sc.succession), pooled, atol=1e-6)
    assert "days" in sc.per_class


def test_layernorm_model_logits_equal_the_per_token_loop():
    """A tiny GPT-2 (LayerNorm with bias, learned positions, biases everywhere): the effective
    OV logits with the final norm equal ``model.unembed`` of each token's OV output; this
    exercises the centring, the Gram-matrix divisor and the norm's bias term."""
    from common.models import config_from_hf
    from common.models.convert import weight_map

    cfg = config_from_hf("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4,
                                  "vocab_size": len(TOK), "layer_norm_epsilon": 1e-5,
                                  "activation_function": "gelu_new", "n_positions": 32,
                                  "tie_word_embeddings": True})
    rng = np.random.default_rng(9)
    d, f = 32, 128
    shapes = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (32, d),
              "c_attn.weight": (d, 3 * d), "c_attn.bias": (3 * d,),
              "attn.c_proj.weight": (d, d), "c_fc.weight": (d, f), "c_fc.bias": (f,),
              "mlp.c_proj.weight": (f, d)}
    tensors = {}
    for _, name, _ in weight_map(cfg):
        name = name if isinstance(name, str) else name[0]
        shape = next((v for k, v in shapes.items() if name.endswith(k)), (d,))
        v = rng.standard_normal(shape).astype(np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            v = (1.0 + 0.2 * v).astype(np.float32)
        elif len(shape) == 2 and "wte" not in name and "wpe" not in name:
            v = (v / np.sqrt(shape[0])).astype(np.float32)
        tensors[name] = v
    model = build(cfg, tensors)
    classes, _ = _classes()
    table = S.pair_table(classes)
    for mode in ("raw_embed", "resid_plus_mlp0"):
        got = np.asarray(S.ov_logits(model, table.tokens, embed_mode=mode).values)
        x = np.asarray(S.effective_embed(model, table.tokens, mode), np.float64)
        ov = np.asarray(W_V(model).values, np.float64) @ np.asarray(W_O(model).values,
                                                                         np.float64)
        for layer in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                out = jnp.asarray(x @ ov[layer, h], jnp.float32)  # [m, d]
                want = np.asarray(model.unembed(out))[:, table.tokens]
                np.testing.assert_allclose(got[layer, h], want, rtol=1e-4,
                                           atol=1e-4 * np.abs(want).max())
        sc = S.score_heads(model, classes, embed_mode=mode)
        want_hits = S.scores_from_logits(got, table).hits
        np.testing.assert_array_equal(sc.hits, want_hits)

"""TransformerLens vocabulary (issue 12, items 2 and 6): model attributes and ``model.cfg``, hook
names in the cache, errors where the mistake is made."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import common.interp.metrics as metrics_module
from common.interp import (
    OV,
    QK,
    W_E,
    W_K,
    W_O,
    W_Q,
    W_U,
    W_V,
    FullLogitsMetric,
    Intervention,
    LensConfig,
    Patch,
    SlowMetricWarning,
    b_O,
    forward,
    get_act_name,
    head_ablation_sweep,
    logit_diff,
    parse_act_name,
    run_with_cache,
)
from tests.common.interp.conftest import TINY

L, H, KV, D = TINY.n_layers, TINY.n_heads, TINY.n_kv_heads, TINY.d_head


def test_model_attributes_are_the_views(tiny):
    for name, view in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O), ("b_O", b_O),
                       ("W_E", W_E), ("W_U", W_U), ("OV", OV), ("QK", QK)):
        got, want = getattr(tiny, name), view(tiny)
        assert got.axes == want.axes and got.coords == want.coords, name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert tiny.W_Q.shape == (L, H, TINY.d_model, D)
    assert tiny.W_K.shape == (L, H, TINY.d_model, D)  # GQA expanded to query heads
    assert tiny.W_O.shape == (L, H, D, TINY.d_model)
    assert tiny.OV.shape == tiny.QK.shape == (L, H, TINY.d_model, TINY.d_model)
    assert tiny.W_E.shape == (TINY.vocab_size, TINY.d_model)
    assert tiny.W_U.shape == (TINY.d_model, TINY.vocab_size)
    # the attributes are computed from the parameters: an edit shows up at once
    np.testing.assert_array_equal(np.asarray(tiny.W_O[1, 2]),
                                  np.asarray(tiny.blocks.attn.o_kernel[...][1, 2]))


def test_cfg_uses_transformerlens_names(tiny):
    cfg = tiny.cfg
    assert isinstance(cfg, LensConfig)
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head,
            cfg.d_mlp, cfg.d_vocab) == (L, H, KV, TINY.d_model, D, TINY.d_mlp, TINY.vocab_size)
    assert cfg.positional_embedding_type == "rotary" and cfg.normalization_type == "RMS"
    assert cfg.act_fn == "silu" and cfg.rotary_base == TINY.rope_theta
    assert cfg.n_ctx == TINY.max_position and cfg.original_architecture == "llama"


def test_act_names_and_cache_lookup_by_hook_name(tiny, full_cache):
    cache = full_cache[1]
    assert get_act_name("z", 1) == "blocks.1.attn.hook_z"
    assert get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert get_act_name("result", 1) == get_act_name("head_out", 1) == "blocks.1.attn.hook_result"
    assert get_act_name("attn", 0) == "blocks.0.attn.hook_pattern"
    assert parse_act_name("blocks.1.hook_mlp_out") == ("mlp_out", 1)
    for site in ("z", "pattern", "q", "k", "v", "rot_q", "head_out", "attn_out", "resid_mid",
                 "mlp_out", "resid_post", "resid_pre"):
        for layer in range(L):
            np.testing.assert_array_equal(np.asarray(cache[get_act_name(site, layer)]),
                                          np.asarray(cache[site, layer]))
    np.testing.assert_array_equal(np.asarray(cache["blocks.1.attn.hook_z"]),
                                  np.asarray(cache["z", -1]))
    assert "blocks.0.attn.hook_z" in cache and ("z", -1) in cache
    assert cache["result"].axes == cache["head_out"].axes
    with pytest.raises(KeyError, match="TransformerLens calls this site 'blocks.0.attn.hook_z'"):
        cache["blocks.0.hook_z"]
    # Issue 12 item 3: scores, MLP internals and norm scales under TransformerLens' names.
    assert get_act_name("attn_scores", 1) == get_act_name("scores", 1) == (
        "blocks.1.attn.hook_attn_scores")
    assert get_act_name("pre", 0) == get_act_name("mlp_pre", 0) == "blocks.0.mlp.hook_pre"
    assert get_act_name("post", 1) == "blocks.1.mlp.hook_post"
    assert get_act_name("scale", 1, "ln1") == get_act_name("ln1_scale", 1) == "blocks.1.ln1.hook_scale"
    assert get_act_name("scale", 0, "ln2") == "blocks.0.ln2.hook_scale"
    assert get_act_name("scale") == get_act_name("ln_final_scale") == "ln_final.hook_scale"
    for hook, want in (("blocks.1.attn.hook_attn_scores", ("attn_scores", 1)),
                       ("blocks.0.mlp.hook_post", ("mlp_post", 0)),
                       ("blocks.1.ln2.hook_scale", ("ln2_scale", 1)),
                       ("ln_final.hook_scale", ("ln_final_scale", None))):
        assert parse_act_name(hook) == want
    with pytest.raises(KeyError, match="'scale' is ambiguous"):
        get_act_name("scale", 0)
    with pytest.raises(ValueError, match="final norm belongs to no layer"):
        get_act_name("ln_final_scale", 1)
    with pytest.raises(KeyError, match="embeddings, normalized outputs and pre_linear are not sites"):
        get_act_name("pre_linear", 0)
    with pytest.raises(KeyError, match="nor a TransformerLens hook name"):
        parse_act_name("hook_z")


def test_ablate_takes_the_model_and_says_what_heads_are(tiny, ids):
    by_model = Intervention.ablate(tiny, [(1, 2), (-1, 0)])
    by_config = Intervention.ablate(tiny.config, [(1, 2), (1, 0)])
    np.testing.assert_array_equal(np.asarray(by_model.gate), np.asarray(by_config.gate))
    assert np.asarray(by_model.gate)[1].tolist() == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_array_equal(np.asarray(forward(tiny, ids, intervention=by_model)),
                                  np.asarray(forward(tiny, ids, intervention=by_config)))
    with pytest.raises(TypeError, match=r"list of \(layer, head\) pairs.*for layer 1, head 3 "
                                        r"write \[\(1, 3\)\]"):
        Intervention.ablate(tiny.config, [1, 3])
    with pytest.raises(TypeError, match=r"list of \(layer, head\) pairs"):
        Intervention.ablate(tiny, 3)
    with pytest.raises(TypeError, match="expected a model or its config"):
        Intervention.ablate("model", [(0, 0)])
    with pytest.raises(ValueError, match=r"layer 2 out of range \[0, 2\)"):
        Intervention.ablate(tiny, [(2, 0)])
    _, cache = run_with_cache(tiny, ids, names_filter="z")
    p = Intervention.patch(tiny, cache, "z", heads=[(-1, 3)]).patches[0]
    assert isinstance(p, Patch) and p.layers == (L - 1,)
    m = Intervention.mean_ablate(tiny, [(0, 1)], cache)
    assert m.gate_baseline.shape == (L, ids.shape[1], H, D)


def test_a_lambda_metric_says_once_what_is_fast(tiny, ids, monkeypatch):
    monkeypatch.setattr(metrics_module, "_warned_full_logits", False)

    def fn(lg):
        return jnp.mean(lg[:, -1, 3] - lg[:, -1, 5])

    with pytest.warns(SlowMetricWarning, match=r"logit_diff\(correct, wrong\).*LogitMetric") as w:
        slow = head_ablation_sweep(tiny, ids, fn)
    assert len(w) == 1 and w[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowMetricWarning)
        head_ablation_sweep(tiny, ids, fn)  # said once per process
        monkeypatch.setattr(metrics_module, "_warned_full_logits", False)
        head_ablation_sweep(tiny, ids, FullLogitsMetric(fn))  # explicit: no note
        fast = head_ablation_sweep(tiny, ids, logit_diff(jnp.asarray([3, 3]),
                                                         jnp.asarray([5, 5])))
    np.testing.assert_allclose(np.asarray(slow), np.asarray(fast), atol=1e-5)

"""The interp checks on the real SmolLM2-135M-Instruct (30 layers, 9 heads on 3 KV heads)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.interp import Intervention, Patch, activation_patching, forward, logit_diff, run_with_cache
from tests.common.interp.by_hand import causal_pattern_and_z

pytestmark = pytest.mark.smollm2

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def prompts(smollm2):
    _, tok = smollm2

    def enc(text):
        e = tok.encode(text)
        return np.asarray(getattr(e, "ids", e), np.int32)

    clean, corrupt = enc(CLEAN), enc(CORRUPT)
    assert clean.shape == corrupt.shape
    mary, john = int(enc(" Mary")[-1]), int(enc(" John")[-1])
    return jnp.asarray(clean[None]), jnp.asarray(corrupt[None]), mary, john


def test_gate_equals_zeroed_rows_of_W_O(smollm2, prompts):
    model = smollm2[0]
    ids = prompts[0]
    heads = [(3, 4), (17, 8)]
    edited = nnx.clone(model)
    for layer, h in heads:
        o = edited.blocks.attn.o_kernel  # [n_layers, heads, d_head, d_model]
        o[...] = o[...].at[layer, h].set(0.0)
    want = np.asarray(forward(edited, ids))
    got = np.asarray(forward(model, ids, intervention=Intervention.ablate(model.config, heads)))
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)
    assert np.abs(got - np.asarray(forward(model, ids))).max() > 1e-3


def test_captured_pattern_z_and_head_out_by_hand(smollm2, prompts):
    model = smollm2[0]
    ids = prompts[0]
    cfg = model.config
    _, c = run_with_cache(model, ids, layers=[0, 29], names_filter=(
        "rot_q", "rot_k", "v", "pattern", "z", "head_out", "attn_out"))
    for layer in (0, 29):
        p, z = causal_pattern_and_z(c, layer, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
        np.testing.assert_allclose(np.asarray(c["pattern", layer]), p, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(c["z", layer]), z, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(c["head_out", layer]).sum(2),
                                   np.asarray(c["attn_out", layer]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # default run: the tiny-model sweep tests in test_sweeps.py
def test_patching_sweep_equals_single_patches_and_gqa_groups(smollm2, prompts):
    model = smollm2[0]
    cfg = model.config
    clean, corrupt, mary, john = prompts
    metric = logit_diff(mary, john)  # clean answer " Mary", corrupted answer " John"
    scores = activation_patching(model, clean, corrupt, metric)
    assert scores.shape == (30, 9)
    _, src = run_with_cache(model, clean, names_filter=("z", "v"))
    z_all = src.stack("z").values  # [L, b, s, h, d]
    lg = np.asarray(forward(model, corrupt))[:, -1]
    base = float(lg[0, mary] - lg[0, john])
    for layer, h in [(0, 0), (9, 4), (14, 6), (29, 8)]:
        # One patch over all layers with a one-hot mask: one compiled program for every head.
        where = jnp.zeros((30, 1, 1, 9, 1), bool).at[layer, 0, 0, h, 0].set(True)
        p = Patch(site="z", layers=tuple(range(30)), value=z_all, where=where)
        lg = np.asarray(forward(model, corrupt, intervention=Intervention(patches=(p,))))[:, -1]
        np.testing.assert_allclose(float(scores.patched.values[layer, h]),
                                   float(lg[0, mary] - lg[0, john]), atol=1e-4)
        np.testing.assert_allclose(float(scores[layer, h]),
                                   float(lg[0, mary] - lg[0, john]) - base, atol=1e-4)
    np.testing.assert_allclose(float(scores.corrupted), base, atol=1e-4)
    assert np.abs(np.asarray(scores)).max() > 0.05  # the change from the corrupted run
    # GQA: a key/value head patch changes exactly the 3 query heads of its group.
    _, z_base = run_with_cache(model, corrupt, names_filter="z", layers=12)
    for kv in range(cfg.n_kv_heads):
        iv = Intervention.patch(cfg, src, "v", heads=[(12, kv)])
        _, z = run_with_cache(model, corrupt, names_filter="z", layers=12, intervention=iv)
        changed = np.abs(np.asarray(z["z", 12]) - np.asarray(z_base["z", 12])).max(axis=(0, 1, 3))
        assert (changed > 1e-6).tolist() == [h // 3 == kv for h in range(9)]


def _hf_sites(hf_model, ids: np.ndarray, layers):
    """transformers' own values of the new sites, read by its hooks on the same GGUF weights:
    forward hooks on ``gate_proj`` (mlp_pre), pre-hooks on ``down_proj`` (mlp_post) and on the
    norms (their input x: the divisor is sqrt(mean(x²) + eps), and the norm's output must be
    x / divisor · w), and an attention function registered with transformers'
    ``AttentionInterface`` that reads the rotated queries and keys it is handed (attn_scores =
    q·kᵀ · scaling, then transformers' own sdpa attention)."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import repeat_kv

    out, handles = {}, []

    def keep(name, layer, fn):
        return lambda mod, args, *res: out.__setitem__((name, layer), fn(args, res))

    def scores_fn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        k = repeat_kv(key, module.num_key_value_groups)
        out[("attn_scores", module.layer_idx)] = (query @ k.transpose(2, 3) * scaling).numpy()
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kw)

    AttentionInterface.register("headlab_scores", scores_fn)
    before = hf_model.config._attn_implementation
    blocks = hf_model.model.layers
    for layer in layers:
        b = blocks[layer]
        handles += [
            b.mlp.gate_proj.register_forward_hook(keep("mlp_pre", layer, lambda a, r: r[0].numpy())),
            b.mlp.down_proj.register_forward_pre_hook(keep("mlp_post", layer, lambda a, r: a[0].numpy())),
            b.input_layernorm.register_forward_hook(
                keep("ln1", layer, lambda a, r: (a[0].numpy(), r[0].numpy()))),
            b.post_attention_layernorm.register_forward_hook(
                keep("ln2", layer, lambda a, r: (a[0].numpy(), r[0].numpy()))),
        ]
    handles.append(hf_model.model.norm.register_forward_hook(
        keep("ln_final", None, lambda a, r: (a[0].numpy(), r[0].numpy()))))
    try:
        hf_model.set_attn_implementation("headlab_scores")
        with torch.no_grad():
            hf_model(torch.tensor(ids, dtype=torch.long))
    finally:
        hf_model.set_attn_implementation(before)
        for h in handles:
            h.remove()
    return out


def test_new_sites_agree_with_transformers_hooks(smollm2, hf_smollm2, prompts):
    """Issue 12 item 3: attn_scores, mlp_pre, mlp_post and the three norm scales against
    transformers' hooks on SmolLM2 (float32; every element to 1e-4, absolute or relative: the
    norm scales reach 900 at the first token, where float32 rounding alone is 6e-5)."""
    model = smollm2[0]
    ids = np.asarray(prompts[0])
    layers = (0, 14, 29)
    eps = model.config.norm_eps
    _, c = run_with_cache(model, ids, layers=layers, names_filter=(
        "attn_scores", "pattern", "mlp_pre", "mlp_post", "ln1_scale", "ln2_scale",
        "ln_final_scale"))
    ref = _hf_sites(hf_smollm2, ids, layers)
    s = ids.shape[1]
    causal = np.tril(np.ones((s, s), bool))

    def close(name, got, want, mask=None):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if mask is not None:
            got, want = got[..., mask], want[..., mask]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
        return np.abs(got - want).max(), np.abs(want).max()

    worst = {}
    for layer in layers:
        worst["attn_scores", layer] = close("attn_scores", c["attn_scores", layer],
                                            ref["attn_scores", layer], causal)
        assert (np.asarray(c["attn_scores", layer])[..., ~causal] == np.finfo(np.float32).min).all()
        for site in ("mlp_pre", "mlp_post"):
            worst[site, layer] = close(site, c[site, layer], ref[site, layer])
        for site, norm, key in (("ln1_scale", "input_layernorm", "ln1"),
                                ("ln2_scale", "post_attention_layernorm", "ln2")):
            x, y = ref[key, layer]
            got = np.asarray(c[site, layer], np.float64)
            want = np.sqrt((x.astype(np.float64) ** 2).mean(-1) + eps)
            worst[site, layer] = close(site, got, want)
            w = getattr(hf_smollm2.model.layers[layer], norm).weight.detach().numpy()
            close(site + " divides", x / got[..., None] * w, y)  # transformers' norm output
    x, y = ref["ln_final", None]
    got = np.asarray(c["ln_final_scale"], np.float64)
    worst["ln_final_scale", None] = close("ln_final_scale", got,
                                          np.sqrt((x.astype(np.float64) ** 2).mean(-1) + eps))
    close("ln_final_scale divides", x / got[..., None] * hf_smollm2.model.norm.weight.detach().numpy(), y)
    print("max abs error, max abs value per site:", {k: f"{e:.1e}/{m:.1f}" for k, (e, m) in worst.items()})

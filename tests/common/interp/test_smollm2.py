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
        attn = edited.blocks[layer].attn
        attn.o_kernel[...] = attn.o_kernel[...].at[h].set(0.0)
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

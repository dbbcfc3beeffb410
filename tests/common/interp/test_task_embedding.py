"""Task embeddings and soft injection (common.interp.task_embedding) on a tiny random model,
checked against the plain forward, explicit per-prompt loops and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import forward, run_with_cache
from common.interp.task_embedding import (
    bucket,
    fine_bucket,
    first_token_loss,
    head_outputs_at,
    injection,
    logits_at,
    mean_at_last,
    pad_right,
    prefix_cache,
    task_embedding,
)
from common.models import layer_stack
from tests.common.interp.conftest import TINY

L, H, D = TINY.n_layers, TINY.n_heads, TINY.d_head


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(3)
    return [rng.integers(1, TINY.vocab_size, n).tolist() for n in (3, 7, 5, 11, 4, 9)]


def test_bucket_and_pad_right(prompts):
    assert [bucket(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 32]
    ids, last = pad_right(prompts, pad_id=0)
    assert ids.shape == (6, 16) and last.tolist() == [2, 6, 4, 10, 3, 8]
    np.testing.assert_array_equal(ids[3, :11], prompts[3])
    assert (ids[3, 11:] == 0).all()
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_right(prompts, length=8)
    with pytest.raises(ValueError, match="at least one token"):
        pad_right([[1], []])


def test_logits_at_last_token_equal_unpadded_forward(tiny, prompts):
    ids, last = pad_right(prompts)
    got = np.asarray(logits_at(tiny, ids, last))
    for i, p in enumerate(prompts):  # each prompt alone, unpadded, through the plain forward
        want = np.asarray(forward(tiny, jnp.asarray([p])))[0, -1]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    # the padded length does not matter (causal mask: padding never reaches the last token)
    ids32, last32 = pad_right(prompts, length=32)
    np.testing.assert_allclose(np.asarray(logits_at(tiny, ids32, last32)), got, rtol=1e-5,
                               atol=1e-5)


def test_zero_weights_leave_the_model_unchanged_bit_for_bit(tiny, prompts):
    ids, last = pad_right(prompts)
    v = jax.random.normal(jax.random.key(0), (L, H, D))
    iv = injection(jnp.zeros((L, H)), v, last, ids.shape[1])
    plain = np.asarray(logits_at(tiny, ids, last))
    mixed = np.asarray(logits_at(tiny, ids, last, intervention=iv))
    np.testing.assert_array_equal(mixed, plain)
    # and the captured z of every layer, every position
    _, c0 = run_with_cache(tiny, ids, names_filter="z")
    _, c1 = run_with_cache(tiny, ids, names_filter="z", intervention=iv)
    for layer in range(L):
        np.testing.assert_array_equal(np.asarray(c1["z", layer]), np.asarray(c0["z", layer]))


def test_weight_one_puts_the_vector_at_the_last_token_only(tiny, prompts):
    ids, last = pad_right(prompts)
    layer, head = 1, 2
    v = np.asarray(jax.random.normal(jax.random.key(1), (L, H, D)))
    a = np.zeros((L, H), np.float32)
    a[layer, head] = 1.0
    iv = injection(jnp.asarray(a), jnp.asarray(v), last, ids.shape[1])
    _, clean = run_with_cache(tiny, ids, names_filter="z")
    _, mixed = run_with_cache(tiny, ids, names_filter="z", intervention=iv)
    zc, zm = np.asarray(clean["z", layer]), np.asarray(mixed["z", layer])
    rows = np.arange(len(prompts))
    np.testing.assert_array_equal(zm[rows, last, head], np.broadcast_to(v[layer, head],
                                                                        (len(prompts), D)))
    keep = np.ones(zc.shape, bool)
    keep[rows, last, head] = False  # everything else of this layer is the clean run's
    np.testing.assert_array_equal(zm[keep], zc[keep])
    np.testing.assert_array_equal(np.asarray(mixed["z", 0]), np.asarray(clean["z", 0]))
    assert not np.allclose(zc[rows, last, head], v[layer, head])


def test_gradient_wrt_mixing_weights_matches_finite_differences(tiny, prompts):
    ids, last = pad_right(prompts)
    v = jax.random.normal(jax.random.key(2), (L, H, D))
    target = jnp.asarray([5, 9, 1, 30, 2, 44])

    def loss(logit):
        iv = injection(jax.nn.sigmoid(logit), v, last, ids.shape[1])
        return jnp.mean(first_token_loss(logits_at(tiny, ids, last, intervention=iv), target))

    logit0 = jax.random.normal(jax.random.key(3), (L, H)) * 0.5
    g = np.asarray(jax.jit(jax.grad(loss))(logit0))
    assert np.abs(g).max() > 1e-3
    f = jax.jit(loss)
    eps = 1e-2
    for k in range(3):  # directional derivatives along random directions
        d = jax.random.normal(jax.random.key(10 + k), (L, H))
        fd = (float(f(logit0 + eps * d)) - float(f(logit0 - eps * d))) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(g * np.asarray(d))), fd, rtol=1e-2, atol=1e-4)
    i, j = np.unravel_index(np.argmax(np.abs(g)), g.shape)  # the largest coordinate alone
    e = jnp.zeros((L, H)).at[i, j].set(eps)
    fd = (float(f(logit0 + e)) - float(f(logit0 - e))) / (2 * eps)
    np.testing.assert_allclose(g[i, j], fd, rtol=1e-2, atol=1e-4)


def test_per_layer_weights_give_the_stacked_logits_and_gradients(tiny, prompts):
    """``per_layer`` (the frozen-model path: layers unrolled on their own arrays) computes the
    same function as the scanned stack: logits and the mixing weights' gradient."""
    ids, last = pad_right(prompts)
    v = jax.random.normal(jax.random.key(4), (L, H, D))
    target = jnp.asarray([5, 9, 1, 30, 2, 44])
    layers = layer_stack.unstack(tiny.blocks)
    assert len(layers) == L

    def loss(logit, per_layer):
        iv = injection(jax.nn.sigmoid(logit), v, last, ids.shape[1])
        logits = logits_at(tiny, ids, last, intervention=iv, per_layer=per_layer)
        return jnp.mean(first_token_loss(logits, target)), logits

    logit0 = jax.random.normal(jax.random.key(5), (L, H))
    grad = jax.jit(jax.grad(loss, has_aux=True))
    (g_stack, lg_stack), (g_layers, lg_layers) = grad(logit0, None), grad(logit0, layers)
    np.testing.assert_allclose(np.asarray(lg_layers), np.asarray(lg_stack), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_layers), np.asarray(g_stack), rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(g_stack)).max() > 1e-3
    # the layers' own weights are what runs: a changed layer changes the logits
    bumped = list(layers)
    bumped[L - 1] = jax.tree.map(lambda a: a * 1.5, bumped[L - 1])
    assert not np.allclose(np.asarray(grad(logit0, tuple(bumped))[1]), np.asarray(lg_stack),
                           atol=1e-3)


@pytest.mark.parametrize("unstacked", [False, True])
def test_prefix_cache_gives_the_same_logits_and_gradients(tiny, prompts, unstacked):
    """With the prompts' prefix caches only the last token runs: the logits and the mixing
    weights' gradient equal the whole prompt's (GQA, right-padded rows of 1 to 11 tokens,
    stacked and per-layer weights)."""
    rows = prompts + [[7]]  # a one-token prompt: an empty prefix
    ids, last = pad_right(rows)
    v = jax.random.normal(jax.random.key(6), (L, H, D))
    target = jnp.asarray([5, 9, 1, 30, 2, 44, 3])
    per_layer = layer_stack.unstack(tiny.blocks) if unstacked else None
    cache = jax.jit(lambda i, la: prefix_cache(tiny, i, la, per_layer=per_layer))(ids, last)
    assert cache.max_len == ids.shape[1] + 1

    def loss(logit, use_prefix):
        a = jax.nn.sigmoid(logit)
        if use_prefix:
            iv = injection(a, v, jnp.zeros_like(last), 1)
            logits = logits_at(tiny, ids, last, intervention=iv, per_layer=per_layer,
                               prefix=cache)
        else:
            iv = injection(a, v, last, ids.shape[1])
            logits = logits_at(tiny, ids, last, intervention=iv, per_layer=per_layer)
        return jnp.mean(first_token_loss(logits, target)), logits

    logit0 = jax.random.normal(jax.random.key(7), (L, H))
    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (g_full, lg_full), (g_pre, lg_pre) = grad(logit0, False), grad(logit0, True)
    np.testing.assert_allclose(np.asarray(lg_pre), np.asarray(lg_full), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_pre), np.asarray(g_full), rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(g_full)).max() > 1e-3
    with pytest.raises(ValueError, match="one token at last"):
        logits_at(tiny, ids, last, prefix=cache,
                  intervention=injection(jax.nn.sigmoid(logit0), v, last, ids.shape[1]))
    # the cache is what the last token reads: another prompt's cache changes the logits
    other = jax.tree.map(lambda a: jnp.roll(a, 1, axis=0) if a.ndim >= 2 else a, cache)
    iv = injection(jax.nn.sigmoid(logit0), v, jnp.zeros_like(last), 1)
    moved = logits_at(tiny, ids, last, intervention=iv, per_layer=per_layer, prefix=other)
    assert not np.allclose(np.asarray(moved), np.asarray(lg_full), atol=1e-3)


def test_task_embedding_equals_an_explicit_loop(tiny, prompts):
    got = np.asarray(task_embedding(tiny, prompts, batch_size=4))
    assert got.shape == (L, H, D)
    per_prompt = []
    for p in prompts:  # each prompt alone, unpadded; z at its last token
        _, cache = run_with_cache(tiny, jnp.asarray([p]), names_filter="z")
        per_prompt.append(np.stack([np.asarray(cache["z", layer])[0, -1]
                                    for layer in range(L)]))
    np.testing.assert_allclose(got, np.mean(per_prompt, axis=0), rtol=1e-5, atol=1e-6)
    ids, last = pad_right(prompts)
    z = np.asarray(head_outputs_at(tiny, ids, last))
    np.testing.assert_allclose(z, np.stack(per_prompt), rtol=1e-5, atol=1e-6)


def test_mean_residual_at_last_equals_an_explicit_loop(tiny, prompts):
    """The mean residual leaving each block at the last token (task vectors), against each
    prompt alone through ``resid_pre`` of the next layer (a different code path)."""
    got = mean_at_last(tiny, prompts, ("z", "resid_post"), batch_size=4, keep=(3, 0))
    want = np.mean([[np.asarray(tiny.resid_pre(jnp.asarray([p]), layer + 1))[0, -1]
                     for layer in range(L - 1)] for p in prompts], axis=0)
    assert got["resid_post"].shape == (L, TINY.d_model)
    np.testing.assert_allclose(np.asarray(got["resid_post"])[:L - 1], want, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["z"]), np.asarray(task_embedding(
        tiny, prompts, batch_size=4)), rtol=1e-6, atol=1e-6)
    for j, i in enumerate((3, 0)):  # the kept prompts' own values
        np.testing.assert_allclose(np.asarray(got["resid_post/kept"])[j, :L - 1], np.asarray(
            [np.asarray(tiny.resid_pre(jnp.asarray([prompts[i]]), layer + 1))[0, -1]
             for layer in range(L - 1)]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got["z/kept"])[j], np.asarray(task_embedding(
            tiny, [prompts[i]], batch_size=1)), rtol=1e-5, atol=1e-6)
    assert fine_bucket(5) == 8 and fine_bucket(64) == 64 and fine_bucket(65) == 128
    assert fine_bucket(130) == 192 and fine_bucket(257) == 320


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_task_embedding_and_injected_loss_match_transformers(smollm2, hf_smollm2):
    """On the real weights: z at the last token equals the input of transformers' o_proj, and
    the injected first-token loss equals a PyTorch pre-hook on o_proj doing the same mixing."""
    import torch

    from tools.bench_soft_injection import torch_steps

    model, tok = smollm2
    cfg = model.config
    prompts = [tok.encode("Q: France\nA: Paris\n\nQ: Japan\nA:"), tok.encode("Q: cold\nA:")]
    got = np.asarray(task_embedding(model, prompts, batch_size=2))
    seen = {}

    def grab(layer):
        def pre(module, args):
            seen[layer] = args[0][0, -1].detach().numpy().reshape(cfg.n_heads, cfg.d_head)
        return pre

    want = np.zeros_like(got)
    for p in prompts:
        hs = [hf_smollm2.model.layers[i].self_attn.o_proj.register_forward_pre_hook(grab(i))
              for i in range(cfg.n_layers)]
        with torch.no_grad():
            hf_smollm2(torch.as_tensor([p]))
        for h in hs:
            h.remove()
        want += np.stack([seen[i] for i in range(cfg.n_layers)]) / len(prompts)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4)
    ids = prompts[1]
    target = tok.encode(" hot")[0]
    a = jnp.full((cfg.n_layers, cfg.n_heads), 0.5)
    ours = float(first_token_loss(logits_at(
        model, jnp.asarray([ids]), jnp.asarray([len(ids) - 1]),
        intervention=injection(a, jnp.asarray(got), jnp.asarray([len(ids) - 1]), len(ids))),
        jnp.asarray([target]))[0])
    _, theirs = torch_steps(hf_smollm2, [(ids, target)], got, 1, lr=0.0)
    np.testing.assert_allclose(ours, theirs[0], rtol=1e-3)

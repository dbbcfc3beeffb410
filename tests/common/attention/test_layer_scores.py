"""The ``attn_scores`` site of MultiHeadAttention (issue 12 item 3): the layer's scored path is
the reference backend with the scores exposed, for GQA, soft-capping and non-causal masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention.backends import reference_attention
from common.attention.core import head_scale
from common.attention.hooks import Hooks
from common.attention.layer import MultiHeadAttention
from common.attention.masks import Mask


class Keep(Hooks):
    """Wants the scores (and optionally the pattern); keeps what it sees; edits via ``edit``."""

    def __init__(self, pattern=False, edit=None):
        self.pattern, self.edit, self.store = pattern, edit, {}

    def wants(self, site, layer):  # noqa: ARG002
        return site == "attn_scores" or (self.pattern and site == "pattern")

    def site(self, site, layer, value):  # noqa: ARG002
        if site == "attn_scores" and self.edit is not None:
            value = self.edit(value)
        self.store[site] = value
        return value


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_scores_path_is_the_reference_backend(softcap):
    b, s, d = 2, 7, 16
    attn = MultiHeadAttention(d, 4, 2, 8, rngs=nnx.Rngs(0), softcap=softcap, backend="reference",
                              init_std=0.5)
    x = jax.random.normal(jax.random.key(1), (b, s, d))
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    masks = [Mask(causal=True),
             Mask(causal=True, kv_valid=jnp.asarray(np.arange(s)[None] >= np.array([[0], [2]]))),
             Mask(q_segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2]] * b),
                  kv_segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2]] * b))]
    for mask in masks:
        want, _ = attn(x, positions=pos, mask=mask)
        hooks = Keep(pattern=True)
        got, _ = attn(x, positions=pos, mask=mask, hooks=hooks)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
        scores = np.asarray(hooks.store["attn_scores"])
        e = np.exp(scores - scores.max(-1, keepdims=True))
        np.testing.assert_allclose(np.asarray(hooks.store["pattern"]), e / e.sum(-1, keepdims=True),
                                   atol=1e-6)
        # By hand from the rotated q, k: q·k · scale, capped, masked at float32's lowest.
        q = attn.rope.apply(attn._proj(x, attn.q_kernel, None), pos) if attn.rope else attn._proj(
            x, attn.q_kernel, None)
        k = attn._proj(x, attn.k_kernel, None)
        logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.repeat(np.asarray(k), 2, axis=2))
        logits = logits * float(head_scale(None, 4, 8)[0])
        if softcap is not None:
            logits = softcap * np.tanh(logits / softcap)
        vis = np.asarray(mask.materialize(b, s, s))
        vis = np.broadcast_to(vis, logits.shape)
        np.testing.assert_allclose(scores[vis], logits[vis], atol=1e-5, rtol=1e-5)
        assert (scores[~vis] == np.finfo(np.float32).min).all()
        # The reference backend's pattern, independently.
        _, ref_p = reference_attention(jnp.asarray(q), k, attn._proj(x, attn.v_kernel, None),
                                       mask, head_scale(None, 4, 8), softcap)
        np.testing.assert_allclose(np.asarray(hooks.store["pattern"]), np.asarray(ref_p), atol=1e-6)


def test_edited_scores_drive_the_output():
    attn = MultiHeadAttention(16, 4, 2, 8, rngs=nnx.Rngs(0), init_std=0.5)
    x = jax.random.normal(jax.random.key(2), (1, 5, 16))
    pos = jnp.arange(5)[None]
    # Every query attends to key 0 only: z is token 0's value for every head.
    only_first = Keep(edit=lambda sc: jnp.full_like(sc, -1e9).at[..., 0].set(0.0))
    out, _ = attn(x, positions=pos, mask=Mask(causal=True), hooks=only_first)
    v = attn._proj(x, attn.v_kernel, None)  # [1, 5, kv, d]
    z = jnp.broadcast_to(jnp.repeat(v[:, :1], 2, axis=2), (1, 5, 4, 8))
    np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.einsum("bshk,hkd->bsd", z,
                                                                      attn.o_kernel[...])),
                               atol=1e-5)

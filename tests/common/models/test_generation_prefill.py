"""``generate``'s ``prefill_intervention`` and ``pad_to``: checked against a brute-force greedy
loop of full forwards (no KV cache, no padding) with the edit at the prompt's last token only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.interp import Intervention, forward
from common.models.generation import generate
from tests.common.interp.conftest import make_model


def _greedy_reference(model, prompt, n_new, a, v):
    """Recompute the whole sequence at every step; mix ``v`` into ``z`` (weights ``a``) at
    the prompt's last position only, never at generated positions."""
    seq = list(prompt)
    for _ in range(n_new):
        where = np.zeros((1, len(seq)), bool)
        where[0, len(prompt) - 1] = True
        iv = Intervention(mix_a=a, mix_v=v, mix_where=jnp.asarray(where))
        logits = np.asarray(forward(model, jnp.asarray([seq]), intervention=iv))[0, -1]
        seq.append(int(np.argmax(logits)))
    return seq[len(prompt):]


def test_prefill_injection_equals_a_full_recompute_with_the_edit_at_the_last_prompt_token():
    model = make_model()
    cfg = model.config
    a = jax.nn.sigmoid(jax.random.normal(jax.random.key(1), (cfg.n_layers, cfg.n_heads)) * 3)
    v = jax.random.normal(jax.random.key(2), (cfg.n_layers, cfg.n_heads, cfg.d_head)) * 4
    prompts = [[3, 7, 1, 9], [5, 2], [8, 8, 4, 1, 6, 2]]
    n_new, pad = 5, 8
    where = np.zeros((1, pad), bool)
    where[0, pad - 1] = True  # left padding: every prompt ends at the last column
    iv = Intervention(mix_a=a, mix_v=v, mix_where=jnp.asarray(where))
    got = generate(model, prompts, n_new, eos_token_id=[], pad_to=pad, prefill_intervention=iv)
    clean = generate(model, prompts, n_new, eos_token_id=[])
    for p, g, c in zip(prompts, got, clean, strict=True):
        assert g == _greedy_reference(model, p, n_new, a, v)
        assert c == _greedy_reference(model, p, n_new, jnp.zeros_like(a), v)
    assert got != clean  # the injection changes the continuations


def test_pad_to_changes_nothing_and_refuses_a_short_length():
    model = make_model()
    prompts = [[3, 7, 1, 9], [5, 2]]
    assert generate(model, prompts, 4, eos_token_id=[], pad_to=16) == generate(
        model, prompts, 4, eos_token_id=[])
    import pytest

    with pytest.raises(ValueError, match="pad_to 3 is shorter"):
        generate(model, prompts, 4, pad_to=3)

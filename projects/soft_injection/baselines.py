"""The spec's embedding baselines (§4), on the same tasks, prompts and scoring as soft injection.

**Function vector** (FV; Todd et al. 2024): heads are ranked by their *average indirect effect*
(AIE): on *corrupted* ICL prompts (the demonstrations' labels shuffled), a head's ``z`` at the
last token is replaced by its mean over clean ICL prompts (the task embedding ``t``), and the
probability of the answer's first token rises by the head's indirect effect; averaged over
prompts and over the tasks of the run (the FV paper's universal head set). The FV of a task is
``sum over the top-k heads (l, h) of t[l, h] @ W_O[l, h]`` (``[d_model]``), *added* to the
residual stream leaving layer ``L // 3`` at the zero-shot prompt's last token.

**Task vector** (TV; Hendel et al. 2023): the residual stream leaving layer ``l`` at the last
token of ICL prompts, averaged over the task-embedding prompts (``[n_layers, d_model]``);
it *replaces* that state at the zero-shot prompt's last token; ``l`` is the layer of best
first-token accuracy on the validation prompts.

Both edit the prompt's forward (the prefill) only, as soft injection does.

Shapes: ``t [L, H, d_head]``; ``W_O [L, H, d_head, d_model]``; FV ``[d_model]``; TV means
``[L, d_model]``; AIE ``[L, H]``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.attention.hooks import resolve_hooks
from common.interp.intervention import Intervention, Patch
from common.interp.task_embedding import position_mask
from common.models.decoder import init_cache
from projects.soft_injection.episodes import Prompts
from projects.soft_injection.evaluate import Setting, accuracy


# ---- function vector -----------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefix_cache(graphdef, state, tokens, valid):
    """Run the left-padded prompts without their last token into a KV cache with one free
    slot; returns the cache and the last token's position."""
    model = nnx.merge(graphdef, state)
    b, n = tokens.shape
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    cache = init_cache(model.config, b, n + 1)
    _, cache = model.forward(tokens, positions=positions, cache=cache, token_valid=valid,
                             last_only=True)
    return cache, jnp.sum(valid, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _answer_prob(graphdef, state, cache, tok, pos, target, iv):
    """Probability of ``target [b]`` after the last token ``tok [b]`` at ``pos [b]``, the
    prompt's other tokens in ``cache``, under the edit ``iv``."""
    model = nnx.merge(graphdef, state)
    logits, _ = model.forward(tok[:, None], positions=pos[:, None], cache=cache, last_only=True,
                              hooks=resolve_hooks(iv, model.config))
    p = jax.nn.softmax(logits[:, -1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(p, target[:, None], axis=-1)[:, 0]


def indirect_effects(model, corrupted: Prompts, t_rows: np.ndarray) -> np.ndarray:
    """Every head's indirect effect on each corrupted prompt, averaged: ``[L, H]``.

    Only the last token's computation changes when a head's ``z`` is replaced there (the
    other positions come before it), so the prompt without its last token is run once into a
    KV cache and each of the ``L·H`` patched runs is one cached step of that token.

    Args:
      corrupted: the prompts (shuffled labels) and their answers' first tokens.
      t_rows: ``[n, L, H, d_head]`` the clean mean ``z`` patched into each prompt (its
        task's embedding).
    """
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    graphdef, state = nnx.split(model)
    toks = corrupted.tokens
    n = max(len(x) for x in toks) - 1
    tokens = np.zeros((len(toks), max(n, 1)), np.int32)
    valid = np.zeros_like(tokens, bool)
    for i, x in enumerate(toks):
        tokens[i, tokens.shape[1] - (len(x) - 1):] = x[:-1]
        valid[i, tokens.shape[1] - (len(x) - 1):] = True
    cache, pos = _prefix_cache(graphdef, state, jnp.asarray(tokens), jnp.asarray(valid))
    last = jnp.asarray([x[-1] for x in toks], jnp.int32)
    target = jnp.asarray(corrupted.target, jnp.int32)
    base = np.asarray(_answer_prob(graphdef, state, cache, last, pos, target, None))
    t_rows = jnp.asarray(t_rows, jnp.float32)
    out = np.zeros((L, H))
    for layer in range(L):
        value = t_rows[:, layer][None, :, None]  # [1, b, 1, H, d_head]
        for h in range(H):
            where = jnp.zeros((1, 1, 1, H, 1), bool).at[..., h, :].set(True)
            iv = Intervention(patches=(Patch("z", jnp.asarray([layer]), value, where),))
            p = np.asarray(_answer_prob(graphdef, state, cache, last, pos, target, iv))
            out[layer, h] = float(np.mean(p - base))
    return out


def top_heads(aie: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of largest AIE, ``(layer, head)``, best first."""
    flat = np.argsort(-np.asarray(aie).ravel(), kind="stable")[:k]
    return [(int(i) // aie.shape[1], int(i) % aie.shape[1]) for i in flat]


def function_vector(model, t: np.ndarray, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """``sum over heads (l, h) of t[l, h] @ W_O[l, h]``: ``[d_model]`` (no bias; the heads'
    mean outputs through the output projection)."""
    from common.models.views import W_O

    wo = np.asarray(W_O(model).values, np.float32)  # [L, H, d_head, d_model]
    t = np.asarray(t, np.float32)
    return np.sum([t[layer, h] @ wo[layer, h] for layer, h in heads], axis=0)


def _resid_patch(vec: np.ndarray, layer: int, last, seq: int, add: bool) -> Intervention:
    where = position_mask(jnp.asarray(last), seq)[None, :, :, None]  # [1, b, seq, 1]
    value = jnp.asarray(vec, jnp.float32)[None, None, None]  # [1, 1, 1, d_model]
    return Intervention(patches=(Patch("resid_post", jnp.asarray([layer]), value, where,
                                       add=add),))


def fv_setting(fv: np.ndarray, layer: int) -> Setting:
    """Add the function vector to the residual stream leaving ``layer`` at the last token."""
    return lambda last, seq: _resid_patch(fv, layer, last, seq, add=True)


# ---- task vector ---------------------------------------------------------------------------
def tv_setting(resid: np.ndarray, layer: int) -> Setting:
    """Replace the residual stream leaving ``layer`` at the last token by ``resid[layer]``
    (``resid [L, d_model]``: the mean over ICL prompts)."""
    return lambda last, seq: _resid_patch(resid[layer], layer, last, seq, add=False)


def choose_tv_layer(model, valid: Prompts, resid: np.ndarray, *,
                    batch_size: int = 16) -> tuple[int, np.ndarray]:
    """The layer whose task vector gives the best first-token accuracy on ``valid`` (the
    first on ties) and every layer's accuracy ``[L]``."""
    accs = np.asarray([accuracy(model, valid, setting=tv_setting(resid, layer),
                                batch_size=batch_size) for layer in range(resid.shape[0])])
    return int(np.argmax(accs)), accs

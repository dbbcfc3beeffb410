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

from common.interp.intervention import Intervention, Patch
from common.interp.task_embedding import logits_at, pad_right, position_mask, prefix_cache
from common.progress import bar
from projects.soft_injection.episodes import Prompts
from projects.soft_injection.evaluate import Setting


# ---- one cached step of the last token ------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, state, ids, last):
    """The KV cache of each right-padded prompt's tokens before ``last`` (one free slot)."""
    return prefix_cache(nnx.merge(graphdef, state), ids, last)


@functools.partial(jax.jit, static_argnames=("graphdef", "repeat"))
def _last_logits(graphdef, state, cache, ids, last, iv, repeat=1):
    """Logits ``[repeat * b, vocab]`` of the last tokens of ``ids [b, T]`` (at ``last``), the
    prompts' other tokens in ``cache``, under the edit ``iv`` (rows ``i * b + j``: copy ``i``
    of prompt ``j``)."""
    model = nnx.merge(graphdef, state)
    if repeat > 1:  # stacked cache: k, v [n_layers, b, slots, kv_heads, d_head]; valid [b, slots]
        kv = jax.tree.map(lambda a: jnp.concatenate([a] * repeat, axis=1), cache.layers)
        cache = cache._replace(layers=kv, valid=jnp.concatenate([cache.valid] * repeat, axis=0))
        ids, last = jnp.tile(ids, (repeat, 1)), jnp.tile(last, repeat)
    return logits_at(model, ids, last, intervention=iv, prefix=cache)


class LastTokenSteps:
    """Edits of the last token of fixed prompts, each one cached step.

    An edit at the last token (a head's ``z``, the residual stream) changes only that
    token's computation (the other positions come before it), so the prompts without their
    last token run once into a KV cache (:func:`~common.interp.task_embedding.prefix_cache`)
    and every edit costs one cached step of the last token instead of a forward of the whole
    prompt.
    """

    def __init__(self, model, prompts: Prompts):
        self.graphdef, self.state = nnx.split(model)
        toks = prompts.tokens
        if min(len(x) for x in toks) < 2:
            raise ValueError("LastTokenSteps: every prompt needs at least two tokens")
        ids, last = pad_right(toks, length=max(len(x) for x in toks))
        self.ids, self.last = jnp.asarray(ids), jnp.asarray(last)
        self.cache = _prefill(self.graphdef, self.state, self.ids, self.last)
        self.target = np.asarray(prompts.target)

    def logits(self, iv: Intervention | None, repeat: int = 1) -> np.ndarray:
        """``[repeat * n, vocab]`` under ``iv`` (its position axis is the one step: 1)."""
        return np.asarray(_last_logits(self.graphdef, self.state, self.cache, self.ids,
                                       self.last, iv, repeat=repeat))

    def answer_prob(self, iv: Intervention | None, repeat: int = 1) -> np.ndarray:
        """Probability of each prompt's answer token, ``[repeat * n]``."""
        lg = self.logits(iv, repeat)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return p[np.arange(len(p)), np.tile(self.target, repeat)]


# ---- function vector -----------------------------------------------------------------------
def indirect_effects(model, corrupted: Prompts, t_rows: np.ndarray, *,
                     max_rows: int = 256, max_cache_bytes: int = 2**30,
                     progress: bool = True) -> np.ndarray:
    """Every head's indirect effect on each corrupted prompt, averaged: ``[L, H]``.

    Each head's patched run is one cached step of the last token (:class:`LastTokenSteps`);
    the heads of a layer go in one batch (copies of the prompts and of their KV cache, each
    copy patching one head), ``max_rows`` rows and ``max_cache_bytes`` of copied cache at
    most (56 ten-shot prompts of up to 1,024 tokens hold a 2.6 GB cache: four copies of it
    ran a 24 GB machine out of memory).

    Args:
      corrupted: the prompts (shuffled labels) and their answers' first tokens.
      t_rows: ``[n, L, H, d_head]`` the clean mean ``z`` patched into each prompt (its
        task's embedding).
      progress: a bar over the layers (minutes for every shipped task).
    """
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    n = len(corrupted)
    steps = LastTokenSteps(model, corrupted)
    base = steps.answer_prob(None)
    t_rows = jnp.asarray(t_rows, jnp.float32)
    cache_bytes = sum(a.nbytes for a in jax.tree.leaves(steps.cache))
    per = max(1, min(H, max_rows // n, max_cache_bytes // max(cache_bytes, 1)))  # heads per call
    out = np.zeros((L, H))
    for layer in bar(range(L), "indirect effect", unit="layer", enabled=progress):
        for h0 in range(0, H, per):
            heads = list(range(h0, min(H, h0 + per)))
            hs = heads + [heads[-1]] * (per - len(heads))  # a fixed batch for one program
            value = jnp.tile(t_rows[:, layer], (per, 1, 1))[None, :, None]  # [1, per*n, 1, H, D]
            where = np.zeros((1, per * n, 1, H, 1), bool)
            for i, h in enumerate(hs):
                where[0, i * n:(i + 1) * n, 0, h] = True
            iv = Intervention(patches=(Patch("z", jnp.asarray([layer]), value,
                                             jnp.asarray(where)),))
            p = steps.answer_prob(iv, repeat=per).reshape(per, n)
            for i, h in enumerate(heads):
                out[layer, h] = float(np.mean(p[i] - base))
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


def choose_tv_layer(model, valid: Prompts, resid: np.ndarray) -> tuple[int, np.ndarray]:
    """The layer whose task vector gives the best first-token accuracy on ``valid`` (the
    first on ties) and every layer's accuracy ``[L]``; each layer one cached step of the
    last token (:class:`LastTokenSteps`)."""
    steps = LastTokenSteps(model, valid)
    n = len(valid)
    last = np.zeros(n, np.int32)  # the one step's position
    accs = np.asarray([float(np.mean(np.argmax(steps.logits(tv_setting(resid, layer)(last, 1)),
                                               -1) == steps.target))
                       for layer in range(resid.shape[0])])
    return int(np.argmax(accs)), accs

"""Scoring prompts, clean or under an intervention (spec §2.7, §8.6): first-token accuracy (one
forward) and exact match (greedy decoding of up to 20 tokens with a KV cache, the intervention
in the prefill only, then the official normalisation).

A *setting* is a function ``(last [b], seq) -> Intervention`` that builds the edit of a batch of
prompts padded to ``seq`` tokens whose last tokens sit at ``last`` (right padding for the
first-token forward, left padding for generation, where ``last = seq - 1``); None is the clean
model. :func:`mix_setting` is soft injection; :mod:`projects.soft_injection.baselines` builds
the function-vector and task-vector settings.

Prompts are sorted by length and run ``batch_size`` at a time, each batch padded to a length
of :func:`~common.interp.task_embedding.fine_bucket` (a short last batch is filled with copies
of its first prompt), under one compiled program per (batch, length, setting structure).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.interp.intervention import Intervention
from common.interp.task_embedding import fine_bucket, injection, logits_at, pad_right
from projects.soft_injection.episodes import Prompts
from projects.soft_injection.prompts import exact_match

Setting = Callable[[np.ndarray, int], Intervention]


def mix_setting(alpha: np.ndarray, v: np.ndarray) -> Setting:
    """Soft injection: ``z' = (1 - a) z + a v`` at each prompt's last token.

    ``alpha [n_layers, n_heads]``, ``v [n_layers, n_heads, d_head]``."""
    a = jnp.asarray(alpha, jnp.float32)
    vv = jnp.asarray(v, jnp.float32)
    return lambda last, seq: injection(a, vv, jnp.asarray(last), seq)


def zero_shot_edit(shape: tuple[int, int, int, int], *, alpha: np.ndarray | None = None,
                   v: np.ndarray | None = None, add: tuple[np.ndarray, int] | None = None,
                   replace: tuple[np.ndarray, int] | None = None) -> Setting:
    """Every zero-shot setting as one intervention structure (so they share one compiled
    program per padded length): soft injection (``alpha``, ``v``), a vector added to the
    residual stream leaving a layer (``add = (vec [d_model], layer)``, the function vector)
    and a vector replacing it (``replace``, the task vector), all at the last token; the parts
    not given are exact no-ops (``a = 0``, a zero vector added, a mask that is False).

    ``shape``: ``(n_layers, n_heads, d_head, d_model)``.
    """
    from common.interp.intervention import Patch
    from common.interp.task_embedding import position_mask

    L, H, D, dm = shape
    a = jnp.zeros((L, H)) if alpha is None else jnp.asarray(alpha, jnp.float32)
    vv = jnp.zeros((L, H, D)) if v is None else jnp.asarray(v, jnp.float32)
    add_v, add_l = (np.zeros(dm, np.float32), 0) if add is None else add
    rep_v, rep_l = (np.zeros(dm, np.float32), 0) if replace is None else replace

    def build(last, seq):
        m = position_mask(jnp.asarray(last), seq)
        where = m[None, :, :, None]  # [1, b, seq, 1]
        patches = (
            Patch("resid_post", jnp.asarray([add_l]), jnp.asarray(add_v, jnp.float32)[
                None, None, None], where, add=True),
            Patch("resid_post", jnp.asarray([rep_l]), jnp.asarray(rep_v, jnp.float32)[
                None, None, None], where & (replace is not None)),
        )
        return Intervention(mix_a=a, mix_v=vv, mix_where=m, patches=patches)

    return build


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(graphdef, state, ids, last, iv):
    model = nnx.merge(graphdef, state)
    return jnp.argmax(logits_at(model, ids, last, intervention=iv), axis=-1)


def _setting_of(setting, alpha, v):
    if (alpha is None) != (v is None):
        raise ValueError("alpha and v go together")
    if alpha is not None:
        if setting is not None:
            raise ValueError("give setting or alpha and v, not both")
        return mix_setting(alpha, v)
    return setting


def _batches(prompts: Prompts, batch_size: int):
    """``(rows, chunk)``: prompt indices by length, each chunk filled to ``batch_size``."""
    order = np.argsort([len(t) for t in prompts.tokens], kind="stable")
    size = min(batch_size, len(order))  # a small set: one batch of its own size
    for s in range(0, len(order), size):
        rows = order[s:s + size]
        chunk = [prompts.tokens[i] for i in rows]
        yield rows, chunk + [chunk[0]] * (size - len(chunk))


def predict(model, prompts: Prompts, *, setting: Setting | None = None,
            alpha: np.ndarray | None = None, v: np.ndarray | None = None,
            batch_size: int = 16) -> np.ndarray:
    """Greedy next token at each prompt's end, ``[n]`` int.

    Args:
      setting: the edit (module docstring); or ``alpha [n_layers, n_heads]`` with ``v
        [n_layers, n_heads, d_head]`` for soft injection; neither runs the clean model.
    """
    setting = _setting_of(setting, alpha, v)
    graphdef, state = nnx.split(model)
    out = np.zeros(len(prompts), np.int64)
    for rows, chunk in _batches(prompts, batch_size):
        ids, last = pad_right(chunk, length=fine_bucket(max(len(c) for c in chunk)))
        iv = None if setting is None else setting(last, ids.shape[1])
        pred = np.asarray(_predict(graphdef, state, jnp.asarray(ids), jnp.asarray(last), iv))
        out[rows] = pred[:len(rows)]
    return out


def accuracy(model, prompts: Prompts, **kw) -> float:
    """First-token accuracy: the greedy next token equals the answer's first token."""
    return float(np.mean(predict(model, prompts, **kw) == prompts.target))


def generated(model, prompts: Prompts, *, setting: Setting | None = None,
              alpha: np.ndarray | None = None, v: np.ndarray | None = None,
              batch_size: int = 16, max_new_tokens: int = 20) -> list[list[int]]:
    """Greedy continuation ids of each prompt (``common.models.generation.generate``, KV
    cache, up to the end-of-sequence token, kept), the setting's edit applied in the prefill
    only, as the official hook does (it acts when the sequence is longer than one token)."""
    from common.models.generation import generate

    setting = _setting_of(setting, alpha, v)
    out: list[list[int]] = [[] for _ in range(len(prompts))]
    for rows, chunk in _batches(prompts, batch_size):
        seq = fine_bucket(max(len(t) for t in chunk))
        last = np.full(len(chunk), seq - 1, np.int32)  # left padding: every prompt ends there
        iv = None if setting is None else setting(last, seq)
        gen = generate(model, chunk, max_new_tokens, pad_to=seq, prefill_intervention=iv)
        for i, r in enumerate(rows):
            out[r] = gen[i]
    return out


def _decode(model, tokenizer, ids: list[int]) -> str:
    eos = model.config.eos_token_id
    eos = set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))
    return tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True)


def continuations(model, tokenizer, prompts: Prompts, **kw) -> list[str]:
    """Greedy continuation text of each prompt (:func:`generated`); the end-of-sequence
    token and special tokens are dropped from the text."""
    return [_decode(model, tokenizer, g) for g in generated(model, prompts, **kw)]


def score(model, tokenizer, prompts: Prompts, task: str, **kw) -> tuple[float, float]:
    """``(first-token accuracy, exact match)`` from one greedy generation: the first
    generated token is the argmax at the prompt's last token (the first-token prediction),
    the decoded continuation is scored by :func:`exact_match_accuracy`'s rule."""
    gen = generated(model, prompts, **kw)
    first = np.asarray([g[0] for g in gen])
    em = [exact_match(_decode(model, tokenizer, g), a, task)
          for g, a in zip(gen, prompts.answers, strict=True)]
    return float(np.mean(first == prompts.target)), float(np.mean(em))


def exact_match_accuracy(model, tokenizer, prompts: Prompts, task: str, **kw) -> float:
    """Exact match (the paper's metric): the normalised greedy continuation starts with the
    normalised gold answer (:func:`projects.soft_injection.prompts.exact_match`)."""
    if len(prompts.answers) != len(prompts):
        raise ValueError("exact_match_accuracy: the prompts carry no gold answers")
    texts = continuations(model, tokenizer, prompts, **kw)
    return float(np.mean([exact_match(t, a, task) for t, a in zip(texts, prompts.answers,
                                                                   strict=True)]))


def timed_accuracy(model, prompts: Prompts, **kw) -> tuple[float, float]:
    """``(accuracy, seconds per prompt)`` of a second, already compiled pass."""
    predict(model, prompts, **kw)  # compile every shape
    t0 = time.perf_counter()
    acc = accuracy(model, prompts, **kw)
    return acc, (time.perf_counter() - t0) / len(prompts)


def kv_cache_bytes(config, n_tokens: float) -> float:
    """Bytes of the keys and values a prompt of ``n_tokens`` keeps (float32): the memory a
    prompt costs at inference, ``2 · layers · kv_heads · d_head · 4`` per token."""
    return 2.0 * config.n_layers * config.n_kv_heads * config.d_head * 4 * n_tokens

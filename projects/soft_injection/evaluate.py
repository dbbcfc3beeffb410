"""Scoring prompts, clean or under an intervention (spec §2.7, §8.6): first-token accuracy (one
forward) and exact match (greedy decoding of up to 20 tokens with a KV cache, the intervention
in the prefill only, then the official normalisation).

A *setting* is a function ``(last [b], seq) -> Intervention`` that builds the edit of a batch of
prompts padded to ``seq`` tokens whose last tokens sit at ``last`` (right padding for the
first-token forward, left padding for generation, where ``last = seq - 1``); None is the clean
model. :func:`mix_setting` is soft injection; :mod:`projects.soft_injection.baselines` builds
the function-vector and task-vector settings.

Prompts are sorted by length and run ``batch_size`` at a time, each batch padded to a
power-of-two length (a short last batch is filled with copies of its first prompt), under one
compiled program per (batch, length, setting structure).
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
from common.interp.task_embedding import bucket, injection, logits_at, pad_right
from projects.soft_injection.episodes import Prompts
from projects.soft_injection.prompts import exact_match

Setting = Callable[[np.ndarray, int], Intervention]


def mix_setting(alpha: np.ndarray, v: np.ndarray) -> Setting:
    """Soft injection: ``z' = (1 - a) z + a v`` at each prompt's last token.

    ``alpha [n_layers, n_heads]``, ``v [n_layers, n_heads, d_head]``."""
    a = jnp.asarray(alpha, jnp.float32)
    vv = jnp.asarray(v, jnp.float32)
    return lambda last, seq: injection(a, vv, jnp.asarray(last), seq)


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
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        chunk = [prompts.tokens[i] for i in rows]
        yield rows, chunk + [chunk[0]] * (batch_size - len(chunk))


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
        ids, last = pad_right(chunk)
        iv = None if setting is None else setting(last, ids.shape[1])
        pred = np.asarray(_predict(graphdef, state, jnp.asarray(ids), jnp.asarray(last), iv))
        out[rows] = pred[:len(rows)]
    return out


def accuracy(model, prompts: Prompts, **kw) -> float:
    """First-token accuracy: the greedy next token equals the answer's first token."""
    return float(np.mean(predict(model, prompts, **kw) == prompts.target))


def continuations(model, tokenizer, prompts: Prompts, *, setting: Setting | None = None,
                  alpha: np.ndarray | None = None, v: np.ndarray | None = None,
                  batch_size: int = 16, max_new_tokens: int = 20) -> list[str]:
    """Greedy continuation text of each prompt (``common.models.generation.generate``, KV
    cache), the setting's edit applied in the prefill only, as the official hook does (it
    acts when the sequence is longer than one token); the end-of-sequence token and
    special tokens are dropped from the text."""
    from common.models.generation import generate

    setting = _setting_of(setting, alpha, v)
    eos = model.config.eos_token_id
    eos = set() if eos is None else ({eos} if isinstance(eos, int) else set(eos))
    out: list[str] = [""] * len(prompts)
    for rows, chunk in _batches(prompts, batch_size):
        seq = bucket(max(len(t) for t in chunk))
        last = np.full(len(chunk), seq - 1, np.int32)  # left padding: every prompt ends there
        iv = None if setting is None else setting(last, seq)
        gen = generate(model, chunk, max_new_tokens, pad_to=seq, prefill_intervention=iv)
        for i, r in enumerate(rows):
            out[r] = tokenizer.decode([t for t in gen[i] if t not in eos],
                                      skip_special_tokens=True)
    return out


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

"""First-token predictions of prompts, clean or with a soft injection (spec §2.7, §8.6).

Prompts are sorted by length and run ``batch_size`` at a time, each batch right-padded to a
power-of-two length (a short last batch is filled with copies of its first prompt), under one
jitted program per (batch, length) shape; only the last real token is unembedded.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.interp.task_embedding import injection, logits_at, pad_right
from projects.soft_injection.episodes import Prompts


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(graphdef, state, ids, last, alpha, v):
    model = nnx.merge(graphdef, state)
    iv = None if alpha is None else injection(alpha, v, last, ids.shape[1])
    return jnp.argmax(logits_at(model, ids, last, intervention=iv), axis=-1)


def predict(model, prompts: Prompts, *, alpha: np.ndarray | None = None,
            v: np.ndarray | None = None, batch_size: int = 16) -> np.ndarray:
    """Greedy next token at each prompt's end, ``[n]`` int.

    Args:
      alpha: ``[n_layers, n_heads]`` mixing weights, with ``v [n_layers, n_heads, d_head]``
        the task embedding mixed in at the last token; None runs the clean model.
    """
    if (alpha is None) != (v is None):
        raise ValueError("predict: alpha and v go together")
    graphdef, state = nnx.split(model)
    a = None if alpha is None else jnp.asarray(alpha, jnp.float32)
    vv = None if v is None else jnp.asarray(v, jnp.float32)
    order = np.argsort([len(t) for t in prompts.tokens], kind="stable")
    out = np.zeros(len(prompts), np.int64)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        chunk = [prompts.tokens[i] for i in rows]
        chunk += [chunk[0]] * (batch_size - len(chunk))
        ids, last = pad_right(chunk)
        pred = np.asarray(_predict(graphdef, state, jnp.asarray(ids), jnp.asarray(last), a, vv))
        out[rows] = pred[:len(rows)]
    return out


def accuracy(model, prompts: Prompts, **kw) -> float:
    """First-token accuracy: the greedy next token equals the answer's first token."""
    return float(np.mean(predict(model, prompts, **kw) == prompts.target))


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

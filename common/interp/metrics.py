"""Metrics of the logits that read only what they need.

A sweep evaluates its metric hundreds of times; the unembedding (``d_model x vocab``) of
every position would cost as much as several blocks. A :class:`LogitMetric` says which
positions and which vocabulary columns it reads, so only those logits are computed.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from common.interp.views import W_U


@struct.dataclass
class LogitMetric:
    """A scalar function of selected logits.

    Attributes:
      fn: static ``logits [batch, len(positions), n_tokens] -> scalar``.
      positions: static positions read (negative counts from the end).
      tokens: vocabulary columns read, ``[n_tokens]`` or per prompt ``[batch, n_tokens]``
        (data, so new answer tokens do not retrace); None reads the whole vocabulary.
    """

    fn: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)
    positions: tuple[int, ...] = struct.field(pytree_node=False, default=(-1,))
    tokens: Any = None

    def logits(self, model, resid_final: jax.Array) -> jax.Array:
        """Selected logits ``[batch, len(positions), n_tokens]`` from the final residual
        ``[batch, seq, d_model]`` (final norm, then only the needed unembedding columns)."""
        seq = resid_final.shape[1]
        pos = [p % seq for p in self.positions]
        if self.tokens is None:
            return model.unembed(resid_final[:, jnp.asarray(pos)])
        x = model.final_norm(resid_final[:, jnp.asarray(pos)])
        wu = W_U(model).values
        t = jnp.asarray(self.tokens)
        if t.ndim == 1:
            return jnp.einsum("bpd,dn->bpn", x, wu[:, t].astype(x.dtype),
                              preferred_element_type=jnp.float32)
        if t.ndim == 2:
            cols = jnp.take(wu, t, axis=1)  # [d, batch, n]
            return jnp.einsum("bpd,dbn->bpn", x, cols.astype(x.dtype),
                              preferred_element_type=jnp.float32)
        raise ValueError(f"LogitMetric.tokens: expected [n] or [batch, n], got {t.shape}")

    def __call__(self, model, resid_final: jax.Array) -> jax.Array:
        return self.fn(self.logits(model, resid_final))


def logit_diff(correct, wrong, position: int = -1) -> LogitMetric:
    """Mean over the batch of ``logit[correct] - logit[wrong]`` at ``position``.

    ``correct`` and ``wrong`` are token ids, scalars or ``[batch]``.
    """
    c, w = jnp.asarray(correct, jnp.int32), jnp.asarray(wrong, jnp.int32)
    if c.shape != w.shape or c.ndim > 1:
        raise ValueError(f"logit_diff: correct {c.shape} and wrong {w.shape} must be scalars or "
                         "[batch] of the same shape")
    return LogitMetric(fn=_diff_first_two, positions=(position,), tokens=jnp.stack([c, w], -1))


def _diff_first_two(logits: jax.Array) -> jax.Array:
    return jnp.mean(logits[:, 0, 0] - logits[:, 0, 1])


def logit_of(token, position: int = -1) -> LogitMetric:
    """Mean over the batch of ``logit[token]`` at ``position`` (token: scalar or [batch])."""
    t = jnp.asarray(token, jnp.int32)
    return LogitMetric(fn=_first, positions=(position,), tokens=t[..., None])


def _first(logits: jax.Array) -> jax.Array:
    return jnp.mean(logits[:, 0, 0])


@struct.dataclass
class FullLogitsMetric:
    """A plain ``fn(logits [batch, seq, vocab]) -> scalar`` (reads every logit)."""

    fn: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)

    def __call__(self, model, resid_final: jax.Array) -> jax.Array:
        return self.fn(model.unembed(resid_final))


class SlowMetricWarning(UserWarning):
    """A sweep was handed a plain function of the full logits (see :func:`as_metric`)."""


_warned_full_logits = False

FULL_LOGITS_NOTE = (
    "metric: a plain function fn(logits) reads the full logits, so every variant of the sweep "
    "unembeds the whole vocabulary at every position (2-4x slower on SmolLM2). Say what it reads "
    "instead: logit_diff(correct, wrong) / logit_of(token), or LogitMetric(fn, positions=(-1,), "
    "tokens=[...]) with fn(logits [batch, n_positions, n_tokens]) -> scalar. Wrap the function "
    "in FullLogitsMetric(fn) to keep it and silence this note (said once per process).")


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside ``common/interp`` (the user's call)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def as_metric(metric, *, warn: bool = False) -> LogitMetric | FullLogitsMetric:
    """A :class:`LogitMetric` as is; a plain callable wrapped in :class:`FullLogitsMetric`.

    With ``warn`` (the sweeps), the first plain callable of the process raises a
    :class:`SlowMetricWarning` naming the fast alternative; an explicit
    :class:`FullLogitsMetric` never does.
    """
    global _warned_full_logits
    if isinstance(metric, LogitMetric | FullLogitsMetric):
        return metric
    if callable(metric):
        if warn and not _warned_full_logits:
            _warned_full_logits = True
            warnings.warn(FULL_LOGITS_NOTE, SlowMetricWarning, stacklevel=_caller_level())
        return FullLogitsMetric(metric)
    raise TypeError(f"metric: expected a LogitMetric or fn(logits) -> scalar, got {type(metric)}")


def evaluate(metric, model, resid_final: jax.Array) -> jax.Array:
    """A metric (see :func:`as_metric`) of the final residual ``[batch, seq, d_model]``."""
    return as_metric(metric)(model, resid_final)

"""Label log-likelihoods of batched prompts, with or without ACT, jit-compiled.

Prompts of different lengths are right-padded (under the causal mask padding never reaches a
real token; ACT is told which tokens are real, so padded queries do not count in the column
means) to a multiple of :data:`BUCKET` tokens and grouped in batches of a fixed size, so a few
compiled programs serve every prompt. :func:`label_logp` returns ``log p(label token |
prompt)`` at each prompt's last real token for every class.

The forward can start at any layer from the residual entering it (``DecoderLM.forward_from``):
the head search runs the layers below the searched head's layer once per batch
(:func:`resid_stack`) and only the rest per head.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.attention.hooks import resolve_hooks
from common.attention.masks import Mask
from common.interp import Intervention, run_with_cache

BUCKET = 32
"""Prompt lengths are padded up to a multiple of this (few compiled programs)."""


@dataclasses.dataclass(frozen=True)
class Batch:
    """Right-padded prompts: ``ids [b, T]`` int32, ``last [b]`` (index of the last real token),
    ``valid [b, T]`` bool, ``rows [n]`` which prompts (their order in the input) fill the first
    ``n`` rows (the rest repeat a prompt to keep the batch size fixed)."""

    ids: np.ndarray
    last: np.ndarray
    valid: np.ndarray
    rows: np.ndarray


def make_batches(prompts: Sequence[Sequence[int]], *, batch_tokens: int = 2048,
                 max_batch: int = 16, pad_id: int = 0) -> list[Batch]:
    """Group ``prompts`` (token lists) by padded length into fixed-size batches.

    The batch size for length ``T`` is ``clip(batch_tokens // T, 1, max_batch)``, or the
    power of two just above the number of prompts of that length when smaller; a last partial
    batch repeats its first prompt (its rows are dropped by :attr:`Batch.rows`).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("make_batches: needs prompts, each with at least one token")
    lengths = np.asarray([len(p) for p in prompts])
    padded = -(-lengths // BUCKET) * BUCKET
    out = []
    for T in sorted(set(padded.tolist())):
        idx = np.flatnonzero(padded == T)
        cap = int(np.clip(batch_tokens // T, 1, max_batch))
        b = min(cap, 1 << (len(idx) - 1).bit_length())  # no filler rows beyond a power of 2
        for start in range(0, len(idx), b):
            rows = idx[start:start + b]
            fill = np.concatenate([rows, np.repeat(rows[:1], b - len(rows))])
            ids = np.full((b, T), pad_id, np.int32)
            for r, i in enumerate(fill):
                ids[r, :lengths[i]] = prompts[i]
            last = lengths[fill].astype(np.int32) - 1
            valid = np.arange(T)[None, :] <= last[:, None]
            out.append(Batch(ids, last, valid, rows))
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(graphdef, state, ids):
    model = nnx.merge(graphdef, state)
    b, s = ids.shape
    return model.embed_tokens(ids, jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)))


@functools.partial(jax.jit, static_argnames=("graphdef", "start"))
def _label_logp(graphdef, state, x, last, label_ids, iv, *, start):
    model = nnx.merge(graphdef, state)
    b, s = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    hooks = resolve_hooks(iv, model.config)
    x = model.run_blocks(x, positions=positions, mask=Mask(causal=True), hooks=hooks,
                         start=start)
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)
    logp = jax.nn.log_softmax(model.unembed(x, hooks)[:, 0], axis=-1)
    out = jnp.take_along_axis(logp, jnp.maximum(label_ids, 0), axis=1)  # [b, C]
    return jnp.where(label_ids >= 0, out, -jnp.inf)


class Scorer:
    """Label log-probabilities of a model, jitted (the model's parameters split once)."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.graphdef, self.state = nnx.split(model)

    def embed(self, batch: Batch) -> jax.Array:
        """The residual entering layer 0, ``[b, T, d_model]``."""
        return _embed(self.graphdef, self.state, jnp.asarray(batch.ids))

    def label_logp(self, batch: Batch, label_ids: Sequence[int], iv: Intervention | None = None,
                   *, x: jax.Array | None = None, start: int = 0) -> np.ndarray:
        """``[b, n_classes]`` log-probabilities of each class's token at the last real token.

        ``label_ids``: ``[n_classes]`` token ids, or ``[b, n_classes]`` per row (prompts of
        several datasets in one batch; ``-1`` pads a row with fewer classes, scored ``-inf``).
        ``x``: the residual entering layer ``start`` (default: the embedding, ``start = 0``);
        ``iv`` must only edit layers ``>= start``.
        """
        b = batch.ids.shape[0]
        label_ids = np.broadcast_to(np.asarray(label_ids, np.int32).reshape(
            (1, -1) if np.ndim(label_ids) == 1 else (b, -1)), (b, np.shape(label_ids)[-1]))
        if x is None:
            if start != 0:
                raise ValueError("label_logp: give the residual x entering layer start")
            x = self.embed(batch)
        if iv is not None and iv.edit_layers is not None and min(iv.edit_layers) < start:
            raise ValueError(f"label_logp: the intervention edits layer {min(iv.edit_layers)}, "
                             f"below the start layer {start}")
        out = _label_logp(self.graphdef, self.state, x, jnp.asarray(batch.last),
                          jnp.asarray(label_ids, jnp.int32), iv or Intervention(), start=start)
        return np.asarray(out)

    def resid_stack(self, batch: Batch, layers: Sequence[int]) -> dict[int, jax.Array]:
        """The residual entering each of ``layers`` in one forward: ``{layer: [b, T, d]}``."""
        _, cache = run_with_cache(self.model, jnp.asarray(batch.ids), names_filter="resid_pre",
                                  layers=list(layers))
        return {layer: cache["resid_pre", layer] for layer in layers}


def predictions(logp: np.ndarray) -> np.ndarray:
    """Class ids ``[b]``: argmax of the label log-probabilities (first class on ties)."""
    return np.argmax(logp, axis=-1)

"""The PINE forward and its baselines on the shared core.

``pine_logits(model, prefix_ids, segments_ids, suffix_ids, method="pine")`` returns the logits
over the suffix ``[len(suffix), vocab]``. The model runs once, jitted (``model(ids,
intervention=...)``), with ``Intervention(mask=..., key_positions=pine_key_positions,
key_params=...)``: every layer and head computes its segment order from its own pre-RoPE
queries and keys, and the core rotates the keys per query. Prompts are right-padded to a
multiple of ``bucket`` tokens so that prompts of similar length share one compiled program
(padding comes after the suffix, where causal attention keeps it from every real token).
Decoding with the cache of keys before RoPE: :mod:`projects.pine.decode`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.attention.masks import Mask
from common.interp import Intervention
from common.models.capture import run_with_cache
from projects.pine.layout import Layout, PineInputError, build_layout
from projects.pine.method import (
    attention_mask,
    block_plan,
    key_params,
    key_positions_fn,
    method_index,
    rope_table_params,
)

BUCKET = 32


def check_model(model) -> None:
    """Raise :class:`PineInputError` unless the model uses RoPE (PINE moves RoPE positions)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "pos", None) != "rope":
        raise PineInputError(f"PINE needs a RoPE model (Llama family); this model has "
                             f"{getattr(cfg, 'pos', 'no')!r} position embeddings")


def padded_length(n: int, bucket: int = BUCKET) -> int:
    return -(-n // bucket) * bucket


def intervention(layout: Layout, method: str, n: int,
                 plan: tuple[int, int] | None = None, model=None) -> Intervention:
    """The :class:`Intervention` of ``method`` for ``layout`` right-padded to ``n`` tokens
    (``plan``: the key blocks, :func:`~projects.pine.method.block_plan`; default its own;
    ``model``: add its RoPE tables, :func:`~projects.pine.method.rope_table_params`)."""
    plan = block_plan([layout], n) if plan is None else plan
    mask = Mask(dense=jnp.asarray(attention_mask(layout, method, n))[None, None])
    params = key_params(layout, method, n, n, plan=plan)
    if model is not None:
        params.update(rope_table_params(model, n))
    return Intervention(mask=mask, key_positions=key_positions_fn(plan[0]), key_params=params)


def pine_forward(model, layout: Layout, method: str = "pine", *,
                 bucket: int = BUCKET) -> np.ndarray:
    """Logits ``[N, vocab]`` (float32 numpy) of every token of ``layout`` under ``method``."""
    check_model(model)
    method_index(method)
    n = padded_length(layout.n, bucket)
    ids = np.zeros(n, np.int32)
    ids[:layout.n] = layout.ids
    logits = model(jnp.asarray(ids)[None], intervention=intervention(layout, method, n,
                                                                       model=model))
    return np.asarray(logits[0, :layout.n])


def batch_inputs(layouts: Sequence[Layout], method: str, bucket: int = BUCKET,
                 model=None) -> tuple[jax.Array, Intervention]:
    """The model's inputs for ``layouts`` under ``method``: token ids ``[batch, n]`` (each
    prompt right-padded to the longest, rounded up to ``bucket``) and the batch's
    :class:`Intervention` (with ``model``'s RoPE tables when given)."""
    n = padded_length(max(lay.n for lay in layouts), bucket)
    ids = np.zeros((len(layouts), n), np.int32)
    for i, lay in enumerate(layouts):
        ids[i, :lay.n] = lay.ids
    if len({lay.k for lay in layouts}) != 1:
        raise PineInputError("pine_forward_batch: every prompt of a batch needs the same number "
                             f"of segments, got {sorted({lay.k for lay in layouts})}")
    plan = block_plan(layouts, n)
    ivs = [intervention(lay, method, n, plan) for lay in layouts]
    params = {name: (ivs[0].key_params[name] if name in ("method", "zero_blocks") else
                     jnp.concatenate([iv.key_params[name] for iv in ivs]))
              for name in ivs[0].key_params}
    if model is not None:
        params.update(rope_table_params(model, n))
    mask = Mask(dense=jnp.concatenate([iv.mask.dense for iv in ivs]))
    iv = Intervention(mask=mask, key_positions=key_positions_fn(plan[0]), key_params=params)
    return jnp.asarray(ids), iv


def pine_forward_batch(model, layouts: Sequence[Layout], method: str = "pine", *,
                       bucket: int = BUCKET, last_only: bool = False) -> list[np.ndarray]:
    """:func:`pine_forward` of several prompts in one batched call (each right-padded to the
    longest, rounded up to ``bucket``): ``[N_i, vocab]`` logits per prompt, or with
    ``last_only`` ``[vocab]`` at each prompt's last token (the unembedding of that row only)."""
    check_model(model)
    method_index(method)
    if not layouts:
        return []
    ids, iv = batch_inputs(layouts, method, bucket, model)
    if last_only:
        last = model.config.n_layers - 1
        _, cache = run_with_cache(model, jnp.asarray(ids), names_filter="resid_post",
                                  layers=[last], intervention=iv, last_only=True)
        rows = jnp.asarray([lay.n - 1 for lay in layouts])
        final = cache["resid_post", last][jnp.arange(len(layouts)), rows]  # [batch, d_model]
        return list(np.asarray(model.unembed(final)))
    logits = np.asarray(model(jnp.asarray(ids), intervention=iv))
    return [logits[i, :lay.n] for i, lay in enumerate(layouts)]


def pine_logits(model, prefix_ids: Sequence[int], segments_ids: Sequence[Sequence[int]],
                suffix_ids: Sequence[int], method: str = "pine", *,
                bucket: int = BUCKET) -> np.ndarray:
    """Logits over the suffix positions, ``[len(suffix_ids), vocab]``.

    Args:
      model: a RoPE decoder (``load_pretrained``'s model).
      prefix_ids: token ids of the prefix (system prompt, instruction; BOS included if wanted).
      segments_ids: k lists of token ids, each segment tokenised on its own.
      suffix_ids: token ids after the segments (question, chat footer).
      method: one of :data:`~projects.pine.method.METHODS`.
    """
    check_model(model)
    layout = build_layout(prefix_ids, segments_ids, suffix_ids, model.config.vocab_size)
    return pine_forward(model, layout, method, bucket=bucket)[layout.seg_end:]

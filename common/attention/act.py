"""Attention calibration (ACT, Yu et al. 2024): hidden attention sinks and their calibration.

ACT edits the post-softmax attention probabilities ``A [batch, heads, q_len, kv_len]`` of
chosen heads, input by input:

1. **Column score** ``c_j``: the mean attention key ``j`` receives from the queries that can
   see it (:func:`column_scores`; ``Σ_i A[i, j] / #{i : i sees j}``; padded queries left out).
2. **Sinks** (:func:`sink_mask`): keys with ``c_j > τ`` (criterion ``"abs_colmean"``, the
   released code's rule, ``τ = 0.1``) or ``c_j > α / N`` (``"alpha_over_n"``, the paper's
   wording, ``N`` the number of tokens); the first flagged key (almost always the first token)
   is spared.
3. **Calibration** (:func:`calibrate`): every row keeps a fraction ``β`` of its attention on the
   sinks, and the freed mass ``(1 - β)·s_i`` goes to the other keys in proportion to their own
   weights: ``A'[i, j] = A[i, j]·(1 + (1 - β)·s_i / r_i)`` with ``s_i``/``r_i`` the row's sink /
   non-sink mass. Rows still sum to 1, masked entries stay 0, ratios between non-sinks are
   kept. (The released code divides by ``r_i`` unguarded; a row with ``r_i = 0`` is left
   unchanged here.)

:class:`ACTCalibration` is this transform in the form an ``Intervention.prob_transform``
takes (``(pattern, params, layer) -> pattern``; β, τ, α and the token-validity mask are data
in ``params``, so changing them never recompiles). It also describes itself to the attention
backends (:meth:`ACTCalibration.fused`): on TPU, ``auto`` then runs the Pallas flash kernel
with the sink columns fused in (``flash_attention(..., act_sinks=, act_beta=)``) instead of
materialising every probability; on CPU the reference path runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

CRITERIA = ("abs_colmean", "alpha_over_n")
"""Sink rules: the released code's absolute column-mean threshold, or the paper's ``α/N``."""


def visibility(q_len: int, kv_len: int, token_valid: jax.Array | None = None,
               batch: int = 1) -> jax.Array:
    """``[batch|1, q_len, kv_len]`` bool: query ``i`` (right-aligned to the keys) sees key ``j``
    causally and both are real tokens (``token_valid [batch, kv_len]``; None: all real)."""
    qi = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    vis = (jnp.arange(kv_len)[None, :] <= qi)[None]
    if token_valid is not None:
        tv = jnp.asarray(token_valid, bool)
        vis = vis & tv[:, None, :] & tv[:, kv_len - q_len:, None]
    return jnp.broadcast_to(vis, (vis.shape[0] if token_valid is not None else batch,)
                            + vis.shape[1:])


def column_scores(pattern: jax.Array, token_valid: jax.Array | None = None) -> jax.Array:
    """Mean attention each key receives from the queries that see it.

    Args:
      pattern: ``[batch, heads, q_len, kv_len]`` attention probabilities (causal, queries
        right-aligned to the keys: the prefill's square pattern, or a decode row).
      token_valid: ``[batch, kv_len]`` bool, False at padding; None: no padding.

    Returns:
      ``[batch, heads, kv_len]`` float32; 0 for a key no query sees.
    """
    b, _, q, k = pattern.shape
    dt = jnp.promote_types(pattern.dtype, jnp.float32)
    vis = visibility(q, k, token_valid, b).astype(dt)  # [b, q, k]
    total = jnp.einsum("bhqk,bqk->bhk", pattern.astype(dt), vis)
    count = vis.sum(axis=1)[:, None, :]  # [b, 1, k]
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)  # [b, h, k]


def sink_mask(scores: jax.Array, threshold: jax.Array | float, *,
              criterion: str = "abs_colmean", token_valid: jax.Array | None = None,
              spare_first: bool = True) -> jax.Array:
    """Which keys are sinks: ``[batch, heads, kv_len]`` bool.

    Args:
      scores: :func:`column_scores` ``[batch, heads, kv_len]``.
      threshold: ``τ`` for ``"abs_colmean"`` (a key is a sink when ``c_j > τ``) or ``α`` for
        ``"alpha_over_n"`` (``c_j > α / N``, ``N`` the number of real tokens).
      criterion: one of :data:`CRITERIA`.
      token_valid: ``[batch, kv_len]``; padding is never a sink and is not counted in ``N``.
      spare_first: leave the first flagged key out (the released code's rule: it spares the
        initial token whenever that token qualifies).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"ACT criterion must be one of {CRITERIA}, got {criterion!r}")
    b, _, k = scores.shape
    valid = (jnp.ones((b, k), bool) if token_valid is None
             else jnp.asarray(token_valid, bool))[:, None, :]
    thr = jnp.asarray(threshold, scores.dtype)
    if criterion == "alpha_over_n":
        thr = thr / valid.sum(axis=-1, keepdims=True).astype(scores.dtype)
    sinks = (scores > thr) & valid
    if spare_first:
        first = jnp.argmax(sinks, axis=-1)[..., None]
        sinks = sinks & (jnp.arange(k) != first)
    return sinks


def calibrate(pattern: jax.Array, sinks: jax.Array, beta: jax.Array | float) -> jax.Array:
    """Scale the sinks' attention by ``β`` and hand the freed mass to the other keys in
    proportion to their weights.

    Args:
      pattern: ``[batch, heads, q_len, kv_len]``.
      sinks: ``[batch, heads|1, kv_len]`` bool.
      beta: scalar or ``[heads]`` (``1`` leaves a head unchanged).

    Returns:
      The calibrated pattern, same shape and dtype; rows with no non-sink mass unchanged.
    """
    dt = jnp.promote_types(pattern.dtype, jnp.float32)  # float32 math, float64 under x64
    p = pattern.astype(dt)
    s_mask = jnp.broadcast_to(sinks[:, :, None, :], p.shape)
    beta = jnp.asarray(beta, dt)
    beta = beta[None, :, None, None] if beta.ndim == 1 else beta
    s = jnp.where(s_mask, p, 0.0).sum(-1, keepdims=True)
    r = jnp.where(s_mask, 0.0, p).sum(-1, keepdims=True)
    gain = 1.0 + (1.0 - beta) * s / jnp.where(r > 0, r, 1.0)
    new = jnp.where(s_mask, beta * p, p * gain)
    return jnp.where(r > 0, new, p).astype(pattern.dtype)


def act_calibrate(pattern: jax.Array, *, beta: jax.Array | float = 0.4,
                  threshold: jax.Array | float = 0.1, criterion: str = "abs_colmean",
                  token_valid: jax.Array | None = None, spare_first: bool = True) -> jax.Array:
    """ACT on every head of ``pattern [batch, heads, q_len, kv_len]``: sinks found per input
    and head (:func:`column_scores`, :func:`sink_mask`), then :func:`calibrate`."""
    scores = column_scores(pattern, token_valid)
    sinks = sink_mask(scores, threshold, criterion=criterion, token_valid=token_valid,
                      spare_first=spare_first)
    return calibrate(pattern, sinks, beta)


def act_params(beta: float = 0.4, threshold: float = 0.1,
               token_valid: jax.Array | None = None) -> dict:
    """The data of :class:`ACTCalibration`: ``{"beta", "threshold"[, "token_valid"]}``."""
    out = {"beta": jnp.asarray(beta, jnp.float32),
           "threshold": jnp.asarray(threshold, jnp.float32)}
    if token_valid is not None:
        out["token_valid"] = jnp.asarray(token_valid, bool)
    return out


@dataclasses.dataclass(frozen=True)
class ACTCalibration:
    """ACT as a probability transform ``(pattern, params, layer) -> pattern``.

    Static (hashable: part of the compiled program): ``criterion`` and ``spare_first``. Data
    (``params``, see :func:`act_params`): ``beta``, ``threshold`` (``τ`` or ``α``) and an
    optional ``token_valid [batch, seq]`` for padded batches. Which heads take the calibrated
    pattern is the intervention's ``prob_heads``.
    """

    criterion: str = "abs_colmean"
    spare_first: bool = True

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"ACT criterion must be one of {CRITERIA}, got {self.criterion!r}")

    def __call__(self, pattern: jax.Array, params: dict, layer=None) -> jax.Array:  # noqa: ARG002
        return act_calibrate(pattern, beta=params["beta"], threshold=params["threshold"],
                             criterion=self.criterion, token_valid=params.get("token_valid"),
                             spare_first=self.spare_first)

    def fused(self, params: dict, heads_row: jax.Array | None) -> Callable:
        """The fused-kernel description for one layer: ``(q, k, mask, scale) -> (sinks [b, h,
        kv] bool, beta [h])``, beta 1 on the heads ``heads_row [heads]`` leaves alone.

        The sinks need every query's probabilities of a head (a column statistic), so they are
        computed here from the logits (no value product); the kernel then applies the
        calibration inside its one pass over the keys.
        """

        def describe(q, k, mask, scale):
            b, sq, h, _ = q.shape
            skv, kvh = k.shape[1], k.shape[2]
            qg = q.reshape(b, sq, kvh, h // kvh, -1)
            logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k,
                                preferred_element_type=jnp.float32).reshape(b, h, sq, skv)
            logits = logits * scale.reshape(1, h, 1, 1)
            if mask is not None:
                m = mask.materialize(b, sq, skv)
                if m is not None:
                    logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
            pattern = jax.nn.softmax(logits, axis=-1)
            tv = params.get("token_valid")
            sinks = sink_mask(column_scores(pattern, tv), params["threshold"],
                              criterion=self.criterion, token_valid=tv,
                              spare_first=self.spare_first)
            beta = jnp.broadcast_to(params["beta"].astype(jnp.float32), (h,))
            if heads_row is not None:
                beta = jnp.where(jnp.asarray(heads_row).astype(bool), beta, 1.0)
            return sinks, beta

        return describe

"""ACT calibration of chosen heads as an :class:`~common.interp.intervention.Intervention`.

>>> iv = act_intervention(model, [(5, 2), (12, 0)])         # β 0.4, τ 0.1, layers 2..L-2
>>> logits = model(ids, intervention=iv)

The transform is :class:`common.attention.act.ACTCalibration` (sinks found per input and head
from the column means of the pattern, their attention scaled by β, the rest redistributed in
proportion); the chosen heads are ``prob_heads``, the edited layers ``edit_layers``, and β, τ
and the padding mask are ``prob_params`` (data: new values reuse the compiled program). No
head in the layer range gives the empty intervention, i.e. the plain forward bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.attention.act import CRITERIA, ACTCalibration, act_params
from common.interp.intervention import Intervention, config_of, head_pairs


def default_layers(n_layers: int) -> tuple[int, ...]:
    """Layers 2 .. L-2: the released code's "2..30 of 32" (first two and last layer left
    alone) on a model of ``n_layers``."""
    return tuple(range(2, n_layers - 1))


def act_intervention(
    model,
    heads: Sequence[tuple[int, int]],
    *,
    beta: float = 0.4,
    threshold: float = 0.1,
    criterion: str = "abs_colmean",
    layers: Sequence[int] | None = None,
    token_valid: jax.Array | None = None,
    spare_first: bool = True,
    whole_range: bool = False,
) -> Intervention:
    """Calibrate ``heads`` (``[(layer, head), ...]``) with ACT.

    Args:
      model: the model or its config.
      heads: the heads to calibrate; heads of layers outside ``layers`` are left alone.
      beta: fraction of its attention a sink keeps (``β``; 1 changes nothing).
      threshold: ``τ`` (``"abs_colmean"``) or ``α`` (``"alpha_over_n"``).
      criterion: one of :data:`common.attention.act.CRITERIA`.
      layers: the layers ACT may edit; default :func:`default_layers` (2 .. L-2).
      token_valid: ``[batch, seq]`` bool, False at (right) padding, so padded queries do not
        count in the column means and padded keys are never sinks.
      spare_first: leave each head's first flagged key alone (the released code's rule).
      whole_range: edit every layer of ``layers`` (the heads are then only data: any head set,
        empty included, runs one compiled program; unchosen heads keep their pattern exactly).
        Default: only the layers that have a chosen head.

    Raises:
      ValueError: a head or layer out of range, a bad β or criterion.
    """
    config = config_of(model, "act_intervention")
    L, H = config.n_layers, config.n_heads
    if criterion not in CRITERIA:
        raise ValueError(f"act_intervention: criterion must be one of {CRITERIA}, got "
                         f"{criterion!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"act_intervention: beta must be in [0, 1], got {beta}")
    layers = default_layers(L) if layers is None else tuple(int(x) for x in layers)
    for layer in layers:
        if not 0 <= layer < L:
            raise ValueError(f"act_intervention: layer {layer} out of range [0, {L})")
    pairs = head_pairs(heads, config, "act heads")
    for layer, head in pairs:
        if not 0 <= layer < L:
            raise ValueError(f"act_intervention: head ({layer}, {head}): layer out of range "
                             f"[0, {L})")
        if not 0 <= head < H:
            raise ValueError(f"act_intervention: head ({layer}, {head}): head out of range "
                             f"[0, {H})")
    mask = np.zeros((L, H), bool)
    for layer, head in pairs:
        if layer in layers:
            mask[layer, head] = True
    edit = layers if whole_range else tuple(int(x) for x in np.flatnonzero(mask.any(axis=1)))
    if not edit:
        return Intervention()
    return Intervention(prob_transform=ACTCalibration(criterion, spare_first),
                        prob_heads=jnp.asarray(mask), prob_params=act_params(beta, threshold, token_valid),
                        edit_layers=edit)


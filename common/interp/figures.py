"""Figures: attention-pattern heatmaps with token labels and ``[layer, head]`` score maps.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display needed). Each
function writes a PNG (and a PDF with ``pdf=True``) and returns the PNG path.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.labelled import Labelled


def _save(fig: Figure, path, pdf: bool) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path


def plot_attention_patterns(
    cache_or_patterns,
    heads: Sequence[tuple[int, int]],
    tokens: Sequence[str],
    path,
    *,
    batch_index: int = 0,
    title: str | None = None,
    pdf: bool = False,
) -> pathlib.Path:
    """Heatmaps of the attention pattern of chosen heads, queries down and keys across.

    Args:
      cache_or_patterns: an ``ActivationCache`` holding ``pattern`` at the heads' layers, or a
        dict ``{(layer, head): [q_len, kv_len] array}``.
      heads: ``(layer, head)`` pairs, one panel each.
      tokens: the prompt's tokens as strings (axis labels); ``len(tokens) == seq``.
      path: output ``.png``.
    """
    if not heads:
        raise ValueError("plot_attention_patterns: heads is empty")
    mats = []
    for layer, head in heads:
        if isinstance(cache_or_patterns, dict):
            m = cache_or_patterns[(layer, head)]
        else:
            m = cache_or_patterns["pattern", layer][batch_index, head]
        m = np.asarray(m, np.float32)
        if m.ndim != 2 or m.shape[1] != len(tokens):
            raise ValueError(f"plot_attention_patterns: pattern of head {(layer, head)} has shape "
                             f"{m.shape}; expected [q_len, {len(tokens)}] (one key per token)")
        mats.append(m)
    n = len(heads)
    cols = min(n, 3)
    rows = -(-n // cols)
    side = max(3.0, 0.28 * len(tokens) + 1.5)
    fig = Figure(figsize=(side * cols, side * rows))
    labels = [repr(t)[1:-1] for t in tokens]
    for i, ((layer, head), m) in enumerate(zip(heads, mats, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_title(f"L{layer}H{head}")
        ax.set_xticks(range(len(tokens)), labels, rotation=90, fontsize=7)
        q_labels = labels[-m.shape[0]:]
        ax.set_yticks(range(m.shape[0]), q_labels, fontsize=7)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return _save(fig, path, pdf)


def plot_head_scores(
    scores: Labelled,
    path,
    *,
    title: str | None = None,
    label: str = "score",
    center: float | None = 0.0,
    annotate: bool | None = None,
    pdf: bool = False,
) -> pathlib.Path:
    """Heatmap of a ``Labelled [layer, head]`` score (layers down, heads across).

    ``center``: the value at the middle of a diverging colour map (None: sequential map).
    ``annotate``: write each value in its cell (default: when there are at most 200 cells).
    """
    if not isinstance(scores, Labelled) or scores.ndim != 2:
        raise ValueError("plot_head_scores: expected a Labelled [layer, head] array, got "
                         f"{getattr(scores, 'axes', type(scores))}")
    rows_name, cols_name = scores.axes
    v = np.asarray(scores.values, np.float32)
    n_rows, n_cols = v.shape
    fig = Figure(figsize=(max(4.0, 0.55 * n_cols + 2), max(3.0, 0.35 * n_rows + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    if center is None:
        im = ax.imshow(v, cmap="viridis", aspect="auto")
    else:
        span = float(np.nanmax(np.abs(v - center))) or 1.0
        im = ax.imshow(v, cmap="RdBu_r", vmin=center - span, vmax=center + span, aspect="auto")
    ax.set_xticks(range(n_cols), [str(x) for x in scores.labels(cols_name)])
    ax.set_yticks(range(n_rows), [str(x) for x in scores.labels(rows_name)])
    ax.set_xlabel(cols_name)
    ax.set_ylabel(rows_name)
    if annotate is None:
        annotate = v.size <= 200
    if annotate:
        for i in range(n_rows):
            for j in range(n_cols):
                ax.text(j, i, f"{v[i, j]:.2g}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label=label)
    if title:
        ax.set_title(title)
    return _save(fig, path, pdf)

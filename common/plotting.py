"""Saving figures, and the layout checks every project's figures must pass.

    save(fig, out_dir, "mse_vs_length")      # PNG + PDF; warns with any layout problem
    layout_problems(fig)                     # ["text 'H=8' overlaps text 'H=4'", ...]

:func:`layout_problems` reads matplotlib's own bounding boxes after a draw and reports what a
reader would see as a defect: two texts that overlap, a text that leaves the canvas, an axis with
tick labels but no label, and a legend drawn over data points or bars. Tests of each project
render its figures and assert the list is empty.
"""

from __future__ import annotations

import itertools
import pathlib
import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

PAD_PX = 1.0  # overlaps smaller than this many pixels are rendering noise, not collisions


class LayoutWarning(UserWarning):
    """A saved figure has a layout problem (see :func:`layout_problems`)."""


def _undrawn_tick_labels(fig: Figure) -> set[int]:
    """Ids of the tick labels matplotlib keeps for ticks outside the view (it does not draw them)."""
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not lo - tol <= loc <= hi + tol:
                    out.update((id(tick.label1), id(tick.label2)))
    return out


def _texts(fig: Figure, renderer) -> list[tuple[str, Bbox]]:
    """``(text, display bbox)`` of every drawn, non-empty text of the figure."""
    out = []
    undrawn = _undrawn_tick_labels(fig)
    for t in fig.findobj(Text):
        if (not t.get_visible() or not t.get_text().strip() or t.get_alpha() == 0
                or id(t) in undrawn):
            continue
        ax = t.axes
        if ax is not None and not ax.get_visible():
            continue
        try:
            bb = t.get_window_extent(renderer)
        except (RuntimeError, ValueError):
            continue
        if bb.width <= 0 or bb.height <= 0 or not np.all(np.isfinite(bb.get_points())):
            continue
        out.append((t.get_text().replace("\n", " "), bb))
    return out


def _overlap(a: Bbox, b: Bbox) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > PAD_PX
            and min(a.y1, b.y1) - max(a.y0, b.y0) > PAD_PX)


def _has_tick_labels(ax: Axes, which: str, undrawn: set[int]) -> bool:
    axis = ax.xaxis if which == "x" else ax.yaxis
    if not axis.get_visible() or not ax.axison:
        return False
    return any(t.get_visible() and t.get_text().strip() and id(t) not in undrawn
               for t in axis.get_ticklabels())


def _data_points(ax: Axes) -> np.ndarray:
    """Display coordinates of the plotted points (line vertices with markers or all line
    vertices, scatter offsets, bar tops) of ``ax``, ``[n, 2]``."""
    pts = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_label().startswith("_"):
            continue
        xy = np.column_stack(line.get_data(orig=False)).astype(float)
        if xy.size:
            pts.append(line.get_transform().transform(xy))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and coll.get_visible():
            off = coll.get_offsets()
            if len(off):
                pts.append(coll.get_offset_transform().transform(np.asarray(off, float)))
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() != 0:
            bb = patch.get_window_extent()
            pts.append(np.array([[bb.x0, bb.y1], [bb.x1, bb.y1], [0.5 * (bb.x0 + bb.x1), bb.y1]]))
    if not pts:
        return np.zeros((0, 2))
    out = np.concatenate(pts)
    return out[np.all(np.isfinite(out), axis=1)]


def layout_problems(fig: Figure) -> list[str]:
    """Readable descriptions of the layout defects of ``fig`` (empty when it is clean).

    Checks, on the figure as drawn: no two texts overlap (tick labels, titles, axis labels,
    legend entries, annotations), no text leaves the canvas, every axis that shows tick labels
    has an axis label (a colour bar too), and no legend covers a data point or bar of its axes.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    problems = []
    texts = _texts(fig, renderer)
    for (ta, ba), (tb, bb) in itertools.combinations(texts, 2):
        if _overlap(ba, bb):
            problems.append(f"text {ta!r} overlaps text {tb!r}")
    for t, bb in texts:
        if (bb.x0 < canvas.x0 - PAD_PX or bb.y0 < canvas.y0 - PAD_PX
                or bb.x1 > canvas.x1 + PAD_PX or bb.y1 > canvas.y1 + PAD_PX):
            problems.append(f"text {t!r} leaves the canvas")
    undrawn = _undrawn_tick_labels(fig)
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = ax.get_title() or ax.get_ylabel() or f"axes {i}"
        for which in ("x", "y"):
            label = ax.get_xlabel() if which == "x" else ax.get_ylabel()
            if _has_tick_labels(ax, which, undrawn) and not label.strip():
                problems.append(f"{name!r}: the {which} axis has tick labels but no label")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            box = legend.get_window_extent(renderer)
            pts = _data_points(ax)
            inside = ((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1)
                      & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1))
            if inside.any():
                problems.append(f"{name!r}: the legend covers {int(inside.sum())} data point(s)")
    return problems


def save_checked(fig: Figure, out: pathlib.Path, name: str, *, dpi: int = 130) -> list[str]:
    """Lay out ``fig``, save ``name.png`` and ``name.pdf`` under ``out``, close it; returns its
    :func:`layout_problems` (also warned as :class:`LayoutWarning`), checked once."""
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not fig.get_constrained_layout():
        fig.tight_layout()
    problems = layout_problems(fig)
    if problems:
        warnings.warn(f"figure {name}: " + "; ".join(problems), LayoutWarning, stacklevel=3)
    fig.savefig(out / f"{name}.png", dpi=dpi)
    fig.savefig(out / f"{name}.pdf")
    plt.close(fig)
    return problems


def save(fig: Figure, out: pathlib.Path, name: str, *, dpi: int = 130) -> list[str]:
    """:func:`save_checked`, returning the two file names instead of the problems."""
    save_checked(fig, out, name, dpi=dpi)
    return [f"{name}.png", f"{name}.pdf"]


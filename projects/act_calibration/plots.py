"""Figures of the act_calibration project, saved through ``common.plotting`` (PNG + PDF and the
layout check). Each function takes plain arrays and an output folder and returns the layout
problems found (empty when clean)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.plotting import save_checked as save  # noqa: E402

COLORS = {"vanilla": "#777777", "act_searched": "#1f77b4", "act_all": "#d62728",
          "act_random": "#2ca02c"}
LABELS = {"vanilla": "vanilla", "act_searched": "ACT, searched heads",
          "act_all": "ACT, all heads", "act_random": "ACT, random heads"}




def _short(tok: str) -> str:
    t = tok.replace("Ġ", "␣").replace("Ċ", "⏎")
    return t if len(t) <= 10 else t[:9] + "…"


def attention_maps(example: dict, heads: Sequence[tuple[int, int]], out: pathlib.Path,
                   name: str = "attention_maps") -> list[str]:
    """Attention patterns of a few heads on one prompt, sink columns marked (one colour scale,
    square-root stretched so weak attention stays visible)."""
    pat, sinks, toks = example["pattern"], example["sinks"], example["tokens"]
    n = len(toks)
    k = len(heads)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k + 1.2, 4.4), constrained_layout=True)
    axes = np.atleast_1d(axes)
    im = None
    step = max(1, n // 12)
    for ax, (layer, h) in zip(axes, heads, strict=True):
        im = ax.imshow(np.sqrt(pat[layer, h]), vmin=0, vmax=1, cmap="magma",
                       interpolation="nearest")
        cols = np.flatnonzero(sinks[layer, h])
        for j in cols:
            ax.axvline(j, color="#00e5ff", lw=0.8, alpha=0.8)
        hidden = [j for j in cols if j > 0]
        label = ", ".join(f"{_short(toks[j])}@{j}" for j in hidden[:3]) or "none"
        ax.set_title(f"L{layer}H{h}; hidden sinks: {label}", fontsize=8)
        ax.set_xlabel("key position")
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
        ax.tick_params(labelsize=7)
        ax.set_ylabel("query position")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.8)
    cb.set_label("√(attention probability)")
    fig.suptitle("Attention of SmolLM2 heads on a classification prompt; cyan lines: keys the "
                 "ACT rule flags as sinks (mean received attention > τ)", fontsize=9)
    return save(fig, out, name)


def sink_frequency(initial: Sequence[float], hidden: Sequence[float], out: pathlib.Path,
                   name: str = "sink_frequency") -> list[str]:
    """Per layer: fraction of (head, prompt) pairs whose first token is a sink, and with at least
    one hidden (non-initial) sink."""
    L = len(initial)
    x = np.arange(L)
    fig, ax = plt.subplots(figsize=(8, 3.8), constrained_layout=True)
    ax.plot(x, initial, "o-", color="#444444", ms=3, label="first token is a sink")
    ax.plot(x, hidden, "s-", color="#d62728", ms=3, label="a hidden sink (beyond the first)")
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of (head, prompt) pairs")
    ax.set_ylim(-0.02, 1.2)
    ax.set_xticks(range(0, L, max(1, L // 15)))
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    ax.set_title("Where the ACT rule (τ = 0.1) finds sinks, by layer", fontsize=10)
    return save(fig, out, name)


def accuracy_bars(table: dict[str, dict[str, tuple[float, float]]], settings: Sequence[str],
                  out: pathlib.Path, paper_gain: float | None = None,
                  name: str = "accuracy") -> list[str]:
    """Accuracy per dataset and setting (mean over seeds), the standard deviation over seeds as
    error bars (the report's table gives the 95% intervals)."""
    names = list(table)
    n, k = len(names), len(settings)
    w = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * n + 2), 4.6), constrained_layout=True)
    for j, s in enumerate(settings):
        means = [100 * table[d][s][0] for d in names]
        sd = [100 * table[d][s][1] for d in names]
        ax.bar(np.arange(n) + (j - (k - 1) / 2) * w, means, w, yerr=sd, capsize=2,
               color=COLORS[s], label=LABELS[s], error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(n))
    ax.set_xticklabels(names)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("dataset")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=k, fontsize=8,
              frameon=False)
    title = "Few-shot accuracy, mean over seeds (error bars: std over seeds)"
    if paper_gain is not None:
        title += f"\npaper: ACT up to +{paper_gain:.1f} points on average (Llama-30B)"
    ax.set_title(title, fontsize=9)
    return save(fig, out, name)


def search_gains(gain: np.ndarray, kept: Sequence[tuple[int, int]], out: pathlib.Path,
                 name: str = "head_search") -> list[str]:
    """Calibration-set accuracy change with each head calibrated alone, ``[layer, head]`` in
    points (grey: not searched), kept heads circled."""
    g = 100 * np.asarray(gain, float)
    lim = max(1.0, float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 1.0)
    fig, ax = plt.subplots(figsize=(5.2, 6.2), constrained_layout=True)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(g), origin="lower", aspect="auto", cmap=cmap,
                   vmin=-lim, vmax=lim, interpolation="nearest")
    for layer, h in kept:
        ax.plot(h, layer, "o", mfc="none", mec="black", ms=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(g.shape[1]))
    ax.set_yticks(range(0, g.shape[0], max(1, g.shape[0] // 15)))
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("accuracy change (points)")
    ax.set_title(f"Head search: one head calibrated at a time\n{len(kept)} kept (circled); "
                 "grey: not searched", fontsize=9)
    return save(fig, out, name)

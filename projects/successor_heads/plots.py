"""Figures of the successor_heads project, saved through ``common.plotting`` (PNG + PDF and the
layout check). Each function takes plain arrays and an output folder and returns the problems
``common.plotting.save`` found (empty when the layout is clean)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from common.plotting import save_checked as save


def _heat(ax, a, vmin, vmax, cmap, title):
    im = ax.imshow(a, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap=cmap,
                   interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(a.shape[1]))
    step = max(1, a.shape[0] // 10)
    ax.set_yticks(range(0, a.shape[0], step))
    if a.shape[0] <= 4:
        ax.set_yticks(range(a.shape[0]))
    return im


def score_heatmaps(succ: np.ndarray, copy: np.ndarray, chance: float, out: pathlib.Path,
                   model: str, mode: str, name: str = "succession_heatmap") -> list[str]:
    """Succession and copy scores ``[layer, head]`` side by side on one 0-1 colour scale."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 5.2), constrained_layout=True)
    im = _heat(axes[0], succ, 0, 1, "viridis",
               f"succession score (best {succ.max():.2f}, chance {chance:.3f})")
    _heat(axes[1], copy, 0, 1, "viridis", f"copy score, control (best {copy.max():.2f})")
    cb = fig.colorbar(im, ax=axes, shrink=0.9)
    cb.set_label("fraction of pairs ranked first (0-1)")
    fig.suptitle(f"{model}: effective OV circuit of every head ({mode})", fontsize=11)
    return save(fig, out, name)


def per_class_bars(heads: Sequence[tuple[int, int, float]], breakdown: dict[str, list[float]],
                   chance: dict[str, float], out: pathlib.Path) -> list[str]:
    """Per-class succession accuracy of the top heads (grouped bars), chance as ticks."""
    names = list(breakdown)
    n, k = len(names), len(heads)
    fig, ax = plt.subplots(figsize=(max(10, 1.1 * n), 4.8), constrained_layout=True)
    w = 0.8 / k
    x = np.arange(n)
    colors = plt.cm.tab10(np.arange(k) % 10)
    for j, (layer, h, s) in enumerate(heads):
        ax.bar(x + (j - (k - 1) / 2) * w, [breakdown[c][j] for c in names], w,
               color=colors[j], label=f"L{layer}H{h} ({s:.2f})")
    ax.scatter(x, [chance[c] for c in names], marker="_", s=600, color="k", zorder=3,
               label="chance (1/|class|)")
    ax.set_xticks(x)
    ax.set_xticklabels([c.replace("_", " ") for c in names], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("succession accuracy (fraction of pairs)")
    ax.set_xlabel("ordinal class")
    ax.set_ylim(0, 1.22)
    ax.legend(ncol=min(k + 1, 4), fontsize=8, loc="upper center", frameon=False)
    ax.set_title("top heads by pooled succession score: accuracy per class", fontsize=10)
    return save(fig, out, "per_class_top_heads")


def mode_comparison(rows: list[dict], chance: float, threshold: float,
                    out: pathlib.Path) -> list[str]:
    """Best succession and copy score for each effective-embedding mode (final norm on/off)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), constrained_layout=True)
    labels = [f"{r['embed_mode']}\n{'final norm' if r['final_norm'] else 'no final norm'}"
              for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["best_succession"] for r in rows], 0.4, label="best succession score")
    ax.bar(x + 0.2, [r["best_copy"] for r in rows], 0.4, label="best copy score (control)")
    ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance {chance:.3f}")
    ax.axhline(threshold, color="r", ls="--", lw=1, label=f"successor bar {threshold}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("score (fraction of pairs)")
    ax.set_xlabel("effective embedding")
    ax.set_ylim(0, 1.35)
    ax.legend(fontsize=8, ncol=2, loc="upper center", frameon=False)
    return save(fig, out, "embed_modes")


def incontext_heads(dla: np.ndarray, dla_shuf: np.ndarray, patch: np.ndarray | None,
                    out: pathlib.Path) -> list[str]:
    """Per-head DLA on clean and shuffled lists (one colour scale) and, when run, patching."""
    n = 3 if patch is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 5.2), constrained_layout=True)
    v = float(max(np.abs(dla).max(), np.abs(dla_shuf).max(), 1e-6))
    im = _heat(axes[0], dla, -v, v, "RdBu_r", "DLA, ordered list")
    _heat(axes[1], dla_shuf, -v, v, "RdBu_r", "DLA, shuffled list")
    cb = fig.colorbar(im, ax=axes[:2], shrink=0.85, location="bottom")
    cb.set_label("logit(successor) - logit(last item), direct effect")
    if patch is not None:
        p = float(max(np.abs(patch).max(), 1e-6))
        im2 = _heat(axes[2], patch, -p, p, "PuOr_r", "patching z, shuffled <- ordered")
        cb2 = fig.colorbar(im2, ax=axes[2], shrink=0.85, location="bottom")
        cb2.set_label("fraction of the logit difference restored")
    return save(fig, out, "incontext_heads")


def incontext_layers(dla_mlp: np.ndarray, dla_heads: np.ndarray, patch_mlp: np.ndarray | None,
                     out: pathlib.Path) -> list[str]:
    """Per layer: the MLP's and the heads' summed direct effect, and the MLP patching."""
    fig, ax = plt.subplots(figsize=(8.5, 4), constrained_layout=True)
    L = np.arange(len(dla_mlp))
    ax.plot(L, dla_mlp, "o-", label="MLP direct effect (logits)")
    ax.plot(L, dla_heads.sum(1), "s-", label="attention heads summed (logits)")
    if patch_mlp is not None:
        ax.plot(L, patch_mlp, "^--", label="MLP patched, fraction restored")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("logit difference / fraction")
    ax.set_title("in-context succession by layer (SmolLM2 list prompts)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return save(fig, out, "incontext_layers")


def mod10_activations(acts: np.ndarray, values: np.ndarray, domains: np.ndarray,
                      domain_names: Sequence[str], coverage: np.ndarray,
                      out: pathlib.Path) -> list[str]:
    """Activation of the modal features f_0..f_9 on every numeric token (sorted by domain and
    value), and each feature's coverage of its residue class."""
    order = np.lexsort((values, domains))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True,
                             gridspec_kw={"width_ratios": [3, 1]})
    a = acts[order].T
    im = axes[0].imshow(a, aspect="auto", cmap="magma", interpolation="nearest",
                        vmin=0, vmax=max(float(a.max()), 1e-6))
    axes[0].set_yticks(range(10))
    axes[0].set_yticklabels([f"f_{r}" for r in range(10)])
    axes[0].set_ylabel("modal feature of residue r")
    ticks = np.arange(0, len(order), max(1, len(order) // 16))
    axes[0].set_xticks(ticks)
    axes[0].set_xticklabels([str(values[order][t]) for t in ticks], fontsize=7)
    axes[0].set_xlabel("numeric token (value; grouped by domain: "
                       + ", ".join(domain_names) + ")")
    cb = fig.colorbar(im, ax=axes[0], shrink=0.9)
    cb.set_label("SAE activation (scaled input units)")
    axes[1].bar(range(10), coverage, color="tab:blue")
    axes[1].set_xticks(range(10))
    axes[1].set_xlabel("residue r (value mod 10)")
    axes[1].set_ylabel("coverage of f_r")
    axes[1].set_ylim(0, 1)
    return save(fig, out, "mod10_features")


def arithmetic(grid: np.ndarray, ks: Sequence[float], rates: Sequence[float],
               control: Sequence[float], k_grid: float, out: pathlib.Path) -> list[str]:
    """Success of the mod-10 edit by (source, target) residue at one scale, and by scale with
    the random-direction control."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), constrained_layout=True)
    im = axes[0].imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1)
    axes[0].set_xlabel("target residue b")
    axes[0].set_ylabel("source residue a")
    axes[0].set_xticks(range(10))
    axes[0].set_yticks(range(10))
    axes[0].set_title(f"success rate at k = {k_grid:g} (blank: no edit)", fontsize=10)
    cb = fig.colorbar(im, ax=axes[0], shrink=0.9)
    cb.set_label("fraction of edits that hit the successor")
    axes[1].plot(ks, rates, "o-", label="edit f_a -> f_b")
    axes[1].plot(ks, control, "s--", label="random direction, same norm")
    axes[1].set_xlabel("scale k (multiples of the features' mean activation)")
    axes[1].set_ylabel("success rate")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8, loc="upper left", frameon=False)
    return save(fig, out, "vector_arithmetic")

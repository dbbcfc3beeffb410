"""Figures of the soft_injection project, saved through ``common.plotting`` (PNG + PDF, the
layout check). Each function takes plain arrays and an output path stem and returns
``(png path, layout problems)``."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.plotting import layout_problems  # noqa: E402
from common.plotting import save as _save  # noqa: E402

LABELS = {"zero_shot": "0-shot", "soft_injection": "soft injection",
          "uniform_mix": "mix a=0.5", "si_binarised": "SI binarised",
          "function_vector": "function vector", "task_vector": "task vector",
          "si_task_agnostic": "SI task-agnostic", "si_m1": "SI M=1"}
COLORS = {"zero_shot": "tab:gray", "soft_injection": "tab:red", "function_vector": "tab:green",
          "task_vector": "tab:green", "si_task_agnostic": "tab:purple", "si_m1": "tab:purple",
          "uniform_mix": "tab:olive", "si_binarised": "tab:olive"}



def _short(name: str, n: int) -> str:
    """``name`` in at most ``n`` characters, most of its end kept (``alphabetically_first_3``
    -> ``alpha…ally_first_3``: tasks that differ only in their suffix stay apart)."""
    if len(name) <= n:
        return name
    tail = name[-(2 * n // 3):]
    return name[:n - len(tail) - 1] + "…" + tail

def label(key: str) -> str:
    return LABELS.get(key, key.replace("icl_", "ICL ") + ("-shot" if key.startswith("icl_") else ""))


def _save_fig(fig, stem: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    stem = pathlib.Path(stem)
    fig.tight_layout()
    problems = layout_problems(fig)
    _save(fig, stem.parent, stem.name)
    return stem.with_suffix(".png"), problems


def alpha_heatmaps(alphas: dict[str, np.ndarray], stem) -> tuple[pathlib.Path, list[str]]:
    """One ``[layer, head]`` heatmap of the learnt weights ``a`` per task, one colour scale."""
    names = list(alphas)
    n = len(names)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1.4, 3.4 * rows), squeeze=False,
                             sharey=True, layout="constrained")
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        a = np.asarray(alphas[names[k]])
        im = ax.imshow(a, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis",
                       interpolation="nearest")
        ax.set_title(_short(names[k], 18), fontsize=8)
        ax.set_xticks(range(0, a.shape[1], 2 if a.shape[1] > 6 else 1))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("head", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("layer", fontsize=8)
    fig.suptitle("learnt soft head selection a = sigmoid(logit) per task", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mixing weight a")
    stem = pathlib.Path(stem)
    problems = layout_problems(fig)
    _save(fig, stem.parent, stem.name)
    return stem.with_suffix(".png"), problems


def accuracy_bars(summary: dict, stem) -> tuple[pathlib.Path, list[str]]:
    """Mean exact match per setting (bars), mean first-token accuracy (hollow bars), per-task
    exact match (points)."""
    keys = summary["settings"]
    tasks = summary["tasks"]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(keys) + 2.5), 4.8))
    x = np.arange(len(keys))
    colors = [COLORS.get(k, "tab:blue") for k in keys]
    ax.bar(x - 0.2, [summary["mean"][k] for k in keys], width=0.4, color=colors, alpha=0.85,
           label="exact match, mean over tasks")
    ax.bar(x + 0.2, [summary["mean_first_token"][k] for k in keys], width=0.4, color="none",
           edgecolor=colors, hatch="//", label="first token, mean over tasks")
    rng = np.random.default_rng(0)
    for i, k in enumerate(keys):
        ys = [tasks[t][k] for t in tasks]
        ax.scatter(i - 0.2 + rng.uniform(-0.12, 0.12, len(ys)), ys, s=7, color="black",
                   zorder=3, label="one task (exact match)" if i == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels([label(k) for k in keys], rotation=40, ha="right", fontsize=8,
                       rotation_mode="anchor")
    ax.set_ylabel("accuracy on the test items")
    ax.set_xlabel("setting")
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
    n_seeds = len(summary["seeds"])
    ax.set_title(f"{summary['model']}: {len(tasks)} tasks, {n_seeds} seed{'s' * (n_seeds > 1)}",
                 fontsize=10)
    return _save_fig(fig, stem)


def similarity(sim: np.ndarray, names: list[str], stem, *, transfer: np.ndarray | None = None
               ) -> tuple[pathlib.Path, list[str]]:
    """Cosine similarity of the tasks' (centred) selections; beside it, the transfer accuracy
    (a of the row task with the embedding of the column task)."""
    n = len(names)
    panels = 2 if transfer is not None else 1
    size = max(3.8, 0.32 * n + 2.2)
    fig, axes = plt.subplots(1, panels, figsize=(size * panels + 1.0, size), squeeze=False)
    short = [_short(s, 18) for s in names]
    fs = 7 if n > 12 else 8
    mats = [(sim, -1, 1, "RdBu_r", "cosine similarity of a (centred)",
             "similarity of selected heads")]
    if transfer is not None:
        mats.append((transfer, 0, 1, "viridis", "accuracy", "transfer: a of row task, t of column"))
    for ax, (m, lo, hi, cmap, clab, title) in zip(axes[0], mats, strict=True):
        im = ax.imshow(m, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(short, rotation=90, fontsize=fs)
        ax.set_yticklabels(short, fontsize=fs)
        ax.set_xlabel("task (embedding t)" if m is transfer else "task")
        ax.set_ylabel("task (selection a)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=clab)
        if n <= 8:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs((m[i, j] - lo) / (hi - lo) - 0.5) > 0.3
                            or (m is transfer and m[i, j] < 0.5) else "black")
    return _save_fig(fig, stem)


def training_curves(sel, names: list[str], stem) -> tuple[pathlib.Path, list[str]]:
    """Training loss (per logging window) and validation loss of every (task, seed)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), layout="constrained")
    vsteps, vloss = list(sel.val_steps), np.asarray(sel.val_loss)
    if sel.initial_val_loss is not None:
        vsteps, vloss = [0] + vsteps, np.concatenate([sel.initial_val_loss[None], vloss])
    for ax, steps, vals, title in ((axes[0], sel.log_steps, sel.train_loss,
                                    "training loss (mean over each logging window)"),
                                   (axes[1], vsteps, vloss, "validation loss")):
        vals = np.asarray(vals)
        if len(steps) and vals.size:
            ax.plot(steps, vals, color="tab:blue", alpha=0.35, lw=1)
            ax.plot(steps, np.nanmean(vals, axis=1), color="black", lw=2, marker="o",
                    label="mean over problems")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("cross-entropy of first answer token (nats)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
    handles = [plt.Line2D([], [], color="tab:blue", alpha=0.5, lw=1),
               plt.Line2D([], [], color="black", lw=2, marker="o")]
    fig.legend(handles, ["one problem (a task and seed, or an ablation)", "mean over problems"],
               loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    stem = pathlib.Path(stem)
    problems = layout_problems(fig)
    _save(fig, stem.parent, stem.name)
    return stem.with_suffix(".png"), problems

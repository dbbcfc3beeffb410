"""The figures (PNG + PDF through :func:`common.plotting.save`, which checks their layout).

* ``scanpaths``: human, OAT greedy and one OAT sample drawn over the object layout of a few test
  trials (the target framed in red; fixation order by colour, one shared scale and colour bar).
* ``metrics``: behavioural Δ and sequence score per method.
* ``behaviour``: the five search statistics per method beside the humans'.
* ``positional_encoding``: the learned table's cosine similarity vs distance against the
  Gaussian target, and the object PE similarity of every object to one object.
* ``training``: cross-entropy and validation Δ over steps.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from common.plotting import save  # noqa: E402
from projects.oat import metrics as M  # noqa: E402
from projects.oat.data import Geometry, crops_float  # noqa: E402

LABELS = {"oat": "OAT (sampled)", "oat_greedy": "OAT (greedy)", "random": "random",
          "centre": "centre bias", "saliency": "saliency-like",
          "target_similarity": "target similarity"}
COLOURS = {"oat": "tab:blue", "oat_greedy": "tab:cyan", "random": "tab:gray",
           "centre": "tab:olive", "saliency": "tab:orange", "target_similarity": "tab:red"}


def layout_image(crops: np.ndarray, geom: Geometry) -> np.ndarray:
    """The display as one image ``[rows·cell_h, cols·cell_w, 3]``: each crop resized (nearest)
    into its cell (with a 10% margin)."""
    w, h = geom.screen
    ch, cw = h // geom.rows, w // geom.cols
    img = np.ones((h, w, 3))
    c = crops_float(crops)
    mh, mw = max(1, ch // 10), max(1, cw // 10)
    ih, iw = ch - 2 * mh, cw - 2 * mw
    for k in range(geom.n):
        r, col = divmod(k, geom.cols)
        yy = (np.arange(ih) * c.shape[1] / ih).astype(int)
        xx = (np.arange(iw) * c.shape[2] / iw).astype(int)
        img[r * ch + mh:r * ch + mh + ih, col * cw + mw:col * cw + mw + iw] = c[k][yy][:, xx]
    return img


def scanpaths(trials: list[dict], greedy: list[np.ndarray], sample: list[np.ndarray],
              geom: Geometry, out: pathlib.Path) -> list[str]:
    """Rows = trials; columns = human, OAT greedy, OAT sample."""
    k = len(trials)
    w, h = geom.screen
    fig, axes = plt.subplots(k, 3, figsize=(12, k * 3.6 * h / w + 0.7), squeeze=False,
                             constrained_layout=True)
    longest = max([len(t["scanpath"]) for t in trials] + [len(g) for g in greedy]
                  + [len(s) for s in sample])
    norm = plt.Normalize(1, max(longest, 2))
    cmap = plt.get_cmap("viridis")
    sc = None
    for i, t in enumerate(trials):
        img = layout_image(t["crops"], geom)
        tgt = int(t["target"])
        for j, (name, path) in enumerate((("human", np.asarray(t["scanpath"])),
                                          ("OAT greedy", greedy[i]), ("OAT sample", sample[i]))):
            ax = axes[i, j]
            ax.imshow(img, extent=(0, w, h, 0))
            r, c = divmod(tgt, geom.cols)
            ax.add_patch(Rectangle((c * w / geom.cols, r * h / geom.rows), w / geom.cols,
                                   h / geom.rows, fill=False, ec="red", lw=2))
            xy = geom.centres[path]
            # re-fixations of one object: small offsets so that each fixation stays visible
            jitter = np.array([[np.cos(a), np.sin(a)] for a in np.arange(len(path)) * 2.4])
            xy = xy + jitter * 0.12 * min(w / geom.cols, h / geom.rows) * (len(path) > 1)
            ax.plot(xy[:, 0], xy[:, 1], "-", color="black", lw=1.0, alpha=0.7)
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(1, len(path) + 1), cmap=cmap,
                            norm=norm, s=40, edgecolors="white", linewidths=0.8, zorder=3)
            b = M.behaviour(path, tgt)
            ax.set_title(f"trial {t.get('uid', i)}, {name}: {len(path)} fixations, "
                         f"{'found' if b['found'] else 'not found'}", fontsize=8)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xlabel("x (px)", fontsize=8)
            ax.set_ylabel("y (px)", fontsize=8)
            ax.tick_params(labelsize=7)
    cb = fig.colorbar(sc, ax=axes, shrink=min(0.9, 0.35 * k), location="right", aspect=30)
    cb.set_label("fixation number (red frame: target)")
    return save(fig, out, "scanpaths")


def metric_bars(scores: dict, out: pathlib.Path) -> list[str]:
    """Behavioural Δ (lower is better) and sequence score (higher is better) per method."""
    names = list(scores)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "behavioural_error", "behavioural error Δ (lower is better)"),
                           (axes[1], "sequence_score", "sequence score (higher is better)")):
        vals = np.array([scores[n][key] for n in names], float)
        finite = np.isfinite(vals)
        y = np.arange(len(names))
        ax.barh(y, np.where(finite, vals, 0.0), color=[COLOURS.get(n, "k") for n in names])
        for yi, v in zip(y, vals, strict=True):
            # Δ is infinite when a human statistic is 0 and the method's is not (official sum)
            ax.text(v if np.isfinite(v) else 0.0, yi,
                    f" {v:.3f}" if np.isfinite(v) else " ∞ (a human statistic is 0)",
                    va="center", fontsize=8)
        ax.set_yticks(y, [LABELS.get(n, n) for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.set_ylabel("method")
        top = vals[finite].max() if finite.any() else 1.0
        ax.set_xlim(0, (top if top > 0 else 1.0) * 1.45)
    return save(fig, out, "metrics")


def behaviour(scores: dict, human: dict, out: pathlib.Path) -> list[str]:
    """The five search statistics (length in its own panel)."""
    names = ["human", *scores]
    stats = {n: (human if n == "human" else scores[n]["stats"]) for n in names}
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [4, 1.6]})
    ratios = ("found", "search", "refix", "revisit")
    x = np.arange(len(ratios))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        col = "black" if n == "human" else COLOURS.get(n, "k")
        axes[0].bar(x + (i - len(names) / 2 + 0.5) * width, [stats[n][r] for r in ratios], width,
                    color=col, label="human" if n == "human" else LABELS.get(n, n))
        axes[1].barh(i, stats[n]["length"], color=col)
    axes[0].set_xticks(x, ["found (target is last)", "search ratio", "refixation ratio",
                           "revisit ratio"], fontsize=8)
    axes[0].set_ylabel("mean over test scanpaths")
    axes[0].set_xlabel("statistic")
    axes[0].set_ylim(0, 1.0)
    axes[0].legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_yticks(range(len(names)), ["human" if n == "human" else LABELS.get(n, n)
                                           for n in names], fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("mean length (fixations)")
    axes[1].set_ylabel("method")
    return save(fig, out, "behaviour")


def positional_encoding(table: np.ndarray, sigma: float, cfg, out: pathlib.Path) -> list[str]:
    """Left: cos(W_i, W_j) against |i − j| with the Gaussian target. Right: cosine of every
    object's PE (flag 0) with the PE of the object at the grid centre."""
    w = np.asarray(table, np.float64)
    u = w / np.linalg.norm(w, axis=-1, keepdims=True)
    c = u @ u.T
    r = len(w)
    i, j = np.triu_indices(r, 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].scatter(np.abs(i - j), c[i, j], s=14, color="tab:blue",
                    label="learned: cos(W_i, W_j), every pair")
    d = np.linspace(0, r - 1, 200)
    axes[0].plot(d, np.exp(-d**2 / (2 * sigma**2)), "k--", lw=1.2,
                 label=f"target exp(−Δ²/2σ²), σ = {sigma:g}")
    axes[0].set_xlabel("distance |i − j| (grid units)")
    axes[0].set_ylabel("cosine similarity")
    axes[0].set_ylim(-0.4, 1.15)
    axes[0].legend(fontsize=8, loc="upper right")
    n = cfg.rows * cfg.cols
    k = np.arange(n)
    pe = np.concatenate([w[k // cfg.cols], w[k % cfg.cols], w[np.zeros(n, int)]], -1)
    pe = pe[:, :cfg.d_pe]
    pe = pe / np.linalg.norm(pe, axis=-1, keepdims=True)
    centre = (cfg.rows // 2) * cfg.cols + cfg.cols // 2
    im = axes[1].imshow((pe @ pe[centre]).reshape(cfg.rows, cfg.cols), cmap="magma", vmin=0,
                        vmax=1)
    axes[1].set_xticks(range(cfg.cols))
    axes[1].set_yticks(range(cfg.rows))
    axes[1].set_xlabel("column")
    axes[1].set_ylabel("row")
    axes[1].set_title(f"object PE cosine to the object at row {cfg.rows // 2}, "
                      f"column {cfg.cols // 2}", fontsize=9)
    cb = fig.colorbar(im, ax=axes[1])
    cb.set_label("cosine similarity")
    return save(fig, out, "positional_encoding")


def training(hist: dict, out: pathlib.Path) -> list[str]:
    """Training cross-entropy and validation Δ (greedy decodes) against the step."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(hist["loss_step"], hist["loss"], color="tab:blue")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("cross-entropy (nats per token)")
    axes[1].plot(hist["delta_step"], hist["delta"], "o-", color="tab:red")
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("validation behavioural Δ (greedy)")
    return save(fig, out, "training")

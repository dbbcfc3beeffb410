"""The figure set (PNG and PDF), each with the paper's quantity on its axes.

Every figure is saved through :func:`common.plotting.save`, which warns (``LayoutWarning``)
when a text overlaps another or leaves the canvas, an axis has tick labels but no label, or a
legend covers data; the project's tests turn that warning into an error. Heatmaps of one
figure share one colour scale per quantity, and their rows and columns are named after the
token entries (x₁ … x_d, y).
"""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from common.plotting import save  # noqa: E402
from projects.icl_regression.paper import PAPER  # noqa: E402

CMAP = LinearSegmentedColormap.from_list("icl", ["#0D2758", "#FFFFFF", "#A32015"])
EST_STYLE = {
    "gd": ("GD (best step at each L)", "tab:green", "--"),
    "debiased_gd": ("debiased GD (step η*)", "black", "--"),
    "bayes": ("Bayes-optimal (ridge)", "tab:purple", ":"),
    "multihead": (f"idealised two-head TF (γ={PAPER['omega_abs']}, μ={PAPER['mu_trained']})",
                  "tab:gray", "-."),
    "single_head": ("single-head kernel regressor (best μ at each L)", "tab:brown", "-."),
}
SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
COINCIDE = 0.02  # curves of H ≥ 2 within 2% of each other at every L are said to coincide


def entry_labels(d: int, n_out: int = 1, start: int = 1) -> list[str]:
    """Names of a token's entries: ``x₁ … x_d`` then ``y`` (``y₀, y₁, …`` for several tasks)."""
    xs = [f"x{str(i + start).translate(SUB)}" for i in range(d)]
    ys = ["y"] if n_out == 1 else [f"y{str(n + start - 1).translate(SUB)}" for n in range(n_out)]
    return xs + ys


def _spread(curves: dict, keys: list[str]) -> float:
    """Largest relative spread ``(max - min) / min`` over prompt lengths of the curves ``keys``."""
    arr = np.asarray([curves[k] for k in keys], np.float64)
    return float(np.max((arr.max(0) - arr.min(0)) / arr.min(0)))


def _coincide_note(curves: dict, heads: list[int]) -> str | None:
    multi = [h for h in heads if h >= 2]
    if len(multi) < 2:
        return None
    spread = _spread(curves, [f"H{h}" for h in multi])
    if spread >= COINCIDE:
        return None
    names = ", ".join(str(h) for h in multi)
    return f"H = {names} lie on top of each other\n(within {100 * spread:.1f}% at every L)"


def _train_length_marker(ax, train_length: int) -> None:
    """A labelled vertical line at the training length."""
    ax.axvline(train_length, color="0.6", lw=0.8)
    ax.text(train_length, 0.98, f" training L = {train_length}", color="0.35", fontsize=7,
            va="top", ha="left", transform=ax.get_xaxis_transform())


def mse_vs_length(curves: dict, lengths: list[int], train_length: int, heads: list[int],
                  out: pathlib.Path) -> list[str]:
    """(1) Test MSE vs prompt length L: trained H-head models and the estimators."""
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(heads)))
    for h, c in zip(heads, colors, strict=True):
        ax.plot(lengths, curves[f"H{h}"], "o-", color=c, ms=3, label=f"trained TF, H={h}")
    for k, (label, color, ls) in EST_STYLE.items():
        if k in curves:
            ax.plot(lengths, curves[k], ls, color=color, label=label)
    _train_length_marker(ax, train_length)
    ax.set_xlabel("Prompt length L")
    ax.set_ylabel("Test MSE (incl. σ²)")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              title=_coincide_note(curves, heads), title_fontsize=7)
    ax.set_title(f"Estimator comparison (models trained at L = {train_length})", fontsize=10)
    return save(fig, out, "mse_vs_length")


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 × 10^k written as plain numbers, no minor labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def mse_vs_heads(mse_at_train: dict, heads: list[int], refs: dict, train_length: int,
                 out: pathlib.Path) -> list[str]:
    """(2) Test MSE at the training length vs number of heads."""
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    ax.plot(heads, [mse_at_train[f"H{h}"] for h in heads], "o-", color="tab:blue",
            label="trained TF")
    for k in ("debiased_gd", "bayes", "single_head"):
        if k in refs:
            label, color, ls = EST_STYLE[k]
            if k == "single_head":
                label = "single-head kernel regressor (best μ)"
            ax.axhline(refs[k], color=color, ls=ls, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Number of heads H")
    ax.set_ylabel(f"Test MSE at L = {train_length} (incl. σ²)")
    ax.set_title(f"Trained models vs number of heads (L = {train_length})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, out, "mse_vs_heads")


def circuits(kq: np.ndarray, ov: np.ndarray, d: int, title: str, name: str,
             out: pathlib.Path, dummy: list[bool] | None = None) -> list[str]:
    """(3) Per-head KQ ``[H, D, D]`` and OV ``[H, N, D]`` heatmaps.

    Each head is a pair: KQ (rows: the context token's entries, columns: the query's) and OV
    drawn as a column beside it (rows: the value token's entries, the same tokens as KQ's rows).
    One colour scale for every KQ and one for every OV of the figure; dashed lines split x from y;
    dummy heads are named in their titles.
    """
    h, n_d, _ = kq.shape
    n_out = ov.shape[1]
    dummy = list(dummy) if dummy is not None else [False] * h
    labels = entry_labels(d, n_out)
    ncol = min(h, 4)
    nrow = math.ceil(h / ncol)
    fig = plt.figure(figsize=(max(2.9 * ncol + 1.6, 6.0), 2.75 * nrow + 0.9), layout="constrained")
    # Equal cells in KQ and OV; the last two columns hold the colour bars (their own grid
    # columns, so that the layout reserves room for their labels).
    gs = fig.add_gridspec(nrow, 2 * ncol + 2, width_ratios=[n_d, n_out] * ncol + [0.3, 0.3])
    vk = float(np.abs(kq).max()) or 1.0
    vo = float(np.abs(ov).max()) or 1.0
    kq_axes, ov_axes = [], []
    for i in range(h):
        r, c = divmod(i, ncol)
        axk = fig.add_subplot(gs[r, 2 * c])
        axo = fig.add_subplot(gs[r, 2 * c + 1], sharey=axk)
        imk = axk.imshow(kq[i], cmap=CMAP, norm=TwoSlopeNorm(0.0, -vk, vk))
        imo = axo.imshow(ov[i].T, cmap=CMAP, norm=TwoSlopeNorm(0.0, -vo, vo))
        for ax in (axk, axo):
            ax.axhline(d - 0.5, color="k", ls="--", lw=0.7)
        axk.axvline(d - 0.5, color="k", ls="--", lw=0.7)
        axk.set_xticks(range(n_d), labels, fontsize=7)
        axk.set_yticks(range(n_d), labels, fontsize=7)
        axk.set_xlabel("query entry", fontsize=7)
        if c == 0:
            axk.set_ylabel("context token entry", fontsize=7)
        else:
            axk.tick_params(labelleft=False)
        axo.set_xticks([])
        axo.tick_params(labelleft=False)
        axk.set_title(f"head {i + 1}" + (" (dummy)" if dummy[i] else "") + ": KQ", fontsize=8)
        axo.set_title("OV", fontsize=8)
        kq_axes.append(axk)
        ov_axes.append(axo)
    shared = " (shared scale)" if h > 1 else ""
    fig.colorbar(imk, cax=fig.add_subplot(gs[:, -2]), label="KQ entry" + shared)
    fig.colorbar(imo, cax=fig.add_subplot(gs[:, -1]), label="OV entry" + shared)
    note = "\nKQ's y column meets the query's y slot, which is 0: it has no effect"
    if any(dummy):
        note += "\ndummy head: its abs(ω_h μ_h) is under 5% of the largest head's"
    fig.suptitle(title + note, fontsize=9)
    return save(fig, out, name)


# (summary key, bar label, claim id in report.THRESHOLDS, short name of the claim)
PATTERN_ONE = (("kq_diag_ratio", "KQ diag ratio ‖diag‖₂ / ‖KQ[:d,:d]‖_F", "kq_diag_ratio",
                "KQ diag ratio"),
               ("ov_last_ratio", "OV last-entry ratio abs(μ) / ‖OV‖₂", "ov_last_ratio",
                "OV last-entry ratio"))
PATTERN_ZERO = (("kq_offdiag_ratio", "KQ off-diag / diag", "kq_offdiag_ratio", "KQ off-diag"),
                ("ov_zero_sum_rel", "abs(Σμ) / Σ abs(μ) (H ≥ 2)", "ov_zero_sum_rel",
                 "zero-sum"),
                ("omega_abs_cv", "std / mean of abs(ω) (H ≥ 2)", "omega_abs_cv",
                 "abs(ω) spread"))


def pattern_bars(metrics: dict, heads: list[int], out: pathlib.Path,
                 thresholds: dict | None = None) -> list[str]:
    """(4) Pattern metrics per number of heads (active heads), with the claims' thresholds.

    Left: the ratios that are 1 for a perfect pattern (with the paper's values); right: the
    quantities that are 0 for a perfect pattern. Dashed lines: the thresholds of the claims
    (``report.THRESHOLDS``).
    """
    thresholds = thresholds or {}
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6))
    x = np.arange(len(heads))
    for ax, keys, title in ((axes[0], PATTERN_ONE, "≈ 1 in the paper's pattern"),
                            (axes[1], PATTERN_ZERO, "≈ 0 in the paper's pattern")):
        w = 0.8 / len(keys)
        colors = plt.cm.tab10(np.arange(len(keys)) + (0 if keys is PATTERN_ONE else 2))
        for j, ((k, label, tkey, short), color) in enumerate(zip(keys, colors, strict=True)):
            vals = [np.nan if (h < 2 and "H ≥ 2" in label) else metrics[f"H{h}"][k] for h in heads]
            ax.bar(x + (j - len(keys) / 2 + 0.5) * w, vals, w, label=label, color=color)
            paper = PAPER.get(k)
            if paper:
                px = [i for i, h in enumerate(heads) if f"H{h}" in paper]
                ax.plot(x[px] + (j - len(keys) / 2 + 0.5) * w,
                        [paper[f"H{heads[i]}"] for i in px], "k_", ms=10, mew=2,
                        label="paper (notebook)" if j == 0 else "_paper")
            if tkey in thresholds:
                op = ">" if keys is PATTERN_ONE else "<"
                ax.axhline(thresholds[tkey], color=color, ls="--", lw=1.0,
                           label=f"claim: {short} {op} {thresholds[tkey]:g}")
        ax.set_xticks(x, [f"H={h}" for h in heads])
        ax.set_xlabel("model (number of heads)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    lo = min(min(metrics[f"H{h}"][k] for h in heads) for k, *_ in PATTERN_ONE)
    lo = min(lo, thresholds.get("ov_last_ratio", 1.0))
    axes[0].set_ylim(max(0.0, 1.0 - 1.25 * (1.0 - lo)), 1.0 + 0.05 * (1.0 - lo))
    axes[0].set_ylabel("ratio (1 = perfect)")
    axes[1].set_ylabel("ratio (0 = perfect)")
    fig.suptitle("Pattern metrics over active (non-dummy) heads", fontsize=11)
    return save(fig, out, "pattern_metrics")


def dynamics(trained: dict, flow2: dict, flow4: dict, gamma_ref: float, mu_ref: float,
             out: pathlib.Path) -> list[str]:
    """(5) ω and μ per head during training vs gradient flow of L̃ (H = 2 and H = 4)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.0), sharex="col", layout="constrained")
    colors = plt.cm.tab10(np.arange(10))
    n_heads = 0

    def draw(col: int, t: np.ndarray, om: np.ndarray, mu: np.ndarray) -> None:
        nonlocal n_heads
        n_heads = max(n_heads, om.shape[1])
        for h in range(om.shape[1]):
            axes[0, col].plot(t, om[:, h], color=colors[h])
            axes[1, col].plot(t, mu[:, h], color=colors[h])
        pos = np.where(om[-1] > 0, 1.0, 0.0)
        axes[1, col].plot(t, (mu * pos).sum(1), "k:")

    for name, tr in list(trained.items())[:1]:
        draw(0, np.asarray(tr["step"]), np.asarray(tr["omega"]), np.asarray(tr["mu"]))
        axes[0, 0].set_title(f"trained {name} (Adam)", fontsize=9)
        axes[1, 0].set_xlabel("Training steps")
    for col, fl, title in ((1, flow2, "gradient flow on L̃, H=2"),
                           (2, flow4, "gradient flow on L̃, H=4")):
        t = np.asarray(fl["time"])
        draw(col, t[1:], np.asarray(fl["omega"])[1:], np.asarray(fl["mu"])[1:])
        axes[0, col].set_title(f"{title} (σ²={fl['sigma2']})", fontsize=9)
        axes[1, col].set_xscale("log")
        axes[1, col].set_xlabel("Time (steps × lr)")
    for c in range(3):
        for v in (gamma_ref, -gamma_ref):
            axes[0, c].axhline(v, color="k", ls="--", lw=0.6)
        for v in (mu_ref, -mu_ref):
            axes[1, c].axhline(v, color="k", ls="--", lw=0.6)
        for r in (0, 1):
            axes[r, c].axhline(0.0, color="0.5", lw=0.5)
        axes[0, c].set_ylabel("ω_h (mean KQ diagonal)")
        axes[1, c].set_ylabel("μ_h (last OV entry)")
    handles = [Line2D([], [], color=colors[h], label=f"head {h + 1}") for h in range(n_heads)]
    handles += [Line2D([], [], color="k", ls=":", label="sum of μ over positive heads (Σ₊μ)"),
                Line2D([], [], color="k", ls="--", lw=0.6,
                       label=f"paper's limit: ω = ±{gamma_ref:g} (top), μ = ±{mu_ref:g} (bottom)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               fontsize=8)
    return save(fig, out, "dynamics")


def noniso(kq: np.ndarray, ov: np.ndarray, d: int, cov: np.ndarray, learned: np.ndarray,
           mse: dict, cos: dict, out: pathlib.Path, labels: dict | None = None,
           dummy: list[bool] | None = None) -> list[str]:
    """(6) Non-isotropic x ~ N(0, Σ): learned KQ blocks vs Σ⁻¹, and the MSE of the predictors.

    ``labels``: display names of the predictors in ``mse`` (default: their keys).
    """
    h = kq.shape[0]
    dummy = list(dummy) if dummy is not None else [False] * h
    labels = labels or {}
    fig = plt.figure(figsize=(3.0 * (h + 2) + 4.0, 3.9), layout="constrained")
    gs = fig.add_gridspec(1, h + 3, width_ratios=[1.0] * (h + 2) + [1.6])
    inv = np.linalg.inv(cov)
    mats = [(kq[i, :d, :d], f"head {i + 1}" + (" (dummy)" if dummy[i] else "")
             + f": KQ[:d,:d], μ={ov[i, 0, d]:+.2f}") for i in range(h)]
    mats.append((learned, "learned Ω (sign-aligned\nmean of the heads' KQ)"))
    v = max(float(np.abs(m).max()) for m, _ in mats) or 1.0
    names = entry_labels(d)[:d]
    kq_axes = []
    first = None
    for i, (m, t) in enumerate(mats + [(inv, "Σ⁻¹")]):
        ax = fig.add_subplot(gs[0, i], sharey=first)
        first = first or ax
        is_inv = i == len(mats)
        vv = float(np.abs(inv).max()) if is_inv else v
        im = ax.imshow(m, cmap=CMAP, norm=TwoSlopeNorm(0.0, -vv, vv))
        ax.set_title(t, fontsize=8)
        ax.set_xticks(range(d), names, fontsize=7)
        ax.set_yticks(range(d), names, fontsize=7)
        ax.set_xlabel("query entry", fontsize=7)
        if i == 0:
            ax.set_ylabel("context token entry", fontsize=7)
        else:
            ax.tick_params(labelleft=False)
        if is_inv:
            fig.colorbar(im, ax=ax, shrink=0.8, label="Σ⁻¹ entry")
        else:
            kq_axes.append(ax)
            im_kq = im
    fig.colorbar(im_kq, ax=kq_axes, shrink=0.8, label="KQ entry (shared scale)")
    ax = fig.add_subplot(gs[0, -1])
    keys = list(mse)
    ax.barh(range(len(keys)), [mse[k] for k in keys], color="tab:blue")
    ax.set_yticks(range(len(keys)), [labels.get(k, k) for k in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set_ylabel("predictor", fontsize=8)
    ax.set_xlabel("Test MSE (incl. σ²)", fontsize=8)
    ax.set_title(f"cos(Ω, Σ⁻¹) = {cos['inv']:.3f}\ncos(Ω, I) = {cos['eye']:.3f}", fontsize=8)
    fig.suptitle("Non-isotropic covariates x ~ N(0, Σ): two heads learn ±γΩ with Ω ∝ Σ⁻¹ "
                 "(preconditioned debiased GD)", fontsize=9)
    return save(fig, out, "noniso_preconditioned_gd")


def multitask(models: dict, subsets: list, out: pathlib.Path) -> list[str]:
    """(7) Two-task superposition: per-head ω per coordinate and OV bottom block μ.

    Coordinates and tasks are numbered from 0, as in the config and the report.
    """
    n = len(models)
    fig, axes = plt.subplots(n, 2, figsize=(9.0, 2.3 * n + 1.2), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.3]}, layout="constrained")
    mats = {c: [np.asarray(m[key]) for m in models.values()]
            for c, key in ((0, "omega_coords"), (1, "mu"))}
    scale = {c: max(float(np.abs(a).max()) for a in ms) or 1.0 for c, ms in mats.items()}
    for r, (name, m) in enumerate(models.items()):
        for c, (t, xl, cb, tick) in enumerate(
                (("ω per coordinate", "coordinate i", "ω_h,i (shared scale)", "x{}"),
                 ("μ (OV bottom block)", "task n", "μ_h,n (shared scale)", "task {}"))):
            ax = axes[r, c]
            mat = mats[c][r]
            v = scale[c]
            im = ax.imshow(mat, cmap=CMAP, norm=TwoSlopeNorm(0.0, -v, v), aspect="auto")
            for (i, j), val in np.ndenumerate(mat):
                ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6)
            ax.set_yticks(range(mat.shape[0]), [f"h{k + 1}" for k in range(mat.shape[0])])
            ax.set_xticks(range(mat.shape[1]),
                          [tick.format(str(k).translate(SUB) if c == 0 else k)
                           for k in range(mat.shape[1])])
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel("head", fontsize=8)
            ax.set_title(f"{name}: {t}; MSE per task "
                         + ", ".join(f"{e:.3f}" for e in m["mse_per_task"])
                         if c == 0 else t, fontsize=8)
            if r == n - 1:
                fig.colorbar(im, ax=axes[:, c].tolist(), shrink=0.8, label=cb)
    sets = ", ".join(f"S{str(i).translate(SUB)} = {sorted(s)}" for i, s in enumerate(subsets))
    fig.suptitle(f"Two-task regression (0-based): task n reads the coordinates Sₙ; {sets}",
                 fontsize=9)
    return save(fig, out, "multitask_superposition")


def theory(th: dict, out: pathlib.Path) -> list[str]:
    """(8) Theory: μ_γ and 2γμ_γ vs γ, L̃ on the manifold, proportional-limit risks, L̃ error."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.0))
    g = np.asarray(th["gamma"])
    ax = axes[0, 0]
    h1 = ax.plot(g, th["mu_gamma"], color="tab:blue", label="μ_γ (left axis)")
    ax2 = ax.twinx()
    h2 = ax2.plot(g, th["eta_gamma"], color="tab:red", label="2γμ_γ, the step (right axis)")
    h3 = [ax2.axhline(th["eta_star"], color="tab:red", ls=":", lw=0.9,
                      label=f"η* = {th['eta_star']:.3f} (right axis)")]
    h4 = [ax.axvline(th["gamma_ref"], color="k", ls="--", lw=0.6,
                     label=f"paper's trained γ = {th['gamma_ref']:g}")]
    ax.set_yscale("log")
    ax.set_xlabel("γ (abs(ω) of every head on the manifold)")
    ax.set_ylabel("μ_γ (log scale)", color="tab:blue")
    ax2.set_ylabel("effective step 2γμ_γ", color="tab:red")
    ax.set_title("Solution manifold S_γ: Σ₊μ = μ_γ", fontsize=9)
    hs = h1 + h2 + h3 + h4
    ax.legend(hs, [x.get_label() for x in hs], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncols=2)
    ax = axes[0, 1]
    ax.plot(g, th["manifold_loss"], label="L̃ on S_γ")
    ax.axhline(th["dgd_risk"], color="k", ls="--", lw=0.8,
               label=f"exact risk of debiased GD with η* ({th['dgd_risk']:.3f}); L̃ drops "
               "finite-L terms")
    ax.set_xlabel("γ")
    ax.set_ylabel("L̃ on S_γ (approximate loss)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=1)
    ax.set_title("L̃ on S_γ is smallest as γ → 0⁺ (Theorem 1, part 2)", fontsize=9)
    ax = axes[1, 0]
    xi = np.asarray(th["xi"])
    r1 = ax.plot(xi, th["prop_gd"], color="tab:blue", label="debiased GD (η*), risk")
    r2 = ax.plot(xi, th["prop_bayes"], color="tab:orange", label="Bayes (ridge), risk")
    ax.set_xlabel("ξ = d / L")
    ax.set_ylabel("Risk (incl. σ²), left axis")
    ax3 = ax.twinx()
    r3 = ax3.plot(xi, th["prop_ratio"], "k:", label="risk ratio GD / Bayes (right axis)")
    r4 = ax3.plot(xi, th["prop_bound"], "r--", label="Theorem 1 (part 3) bound (right axis)")
    ax3.set_ylabel("ratio")
    hs = r1 + r2 + r3 + r4
    ax.legend(hs, [x.get_label() for x in hs], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncols=2)
    ax.set_title(f"Proportional limit d, L → ∞, d/L = ξ (σ² = {th['prop_sigma2']})",
                 fontsize=9)
    ax = axes[1, 1]
    diff = np.asarray(th["heat_diff"])
    im = ax.imshow(diff, origin="lower", cmap=CMAP, norm=TwoSlopeNorm(0.0, -0.12, 0.12),
                   extent=[th["heat_w"][0], th["heat_w"][-1], th["heat_m"][0], th["heat_m"][-1]],
                   aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, label="true loss − L̃ (clipped to ±0.12)")
    ax.set_xlabel("ω (two heads: ω and −ω)")
    ax.set_ylabel("μ (two heads: μ and −μ)")
    ax.set_title("Monte-Carlo true loss − L̃", fontsize=9)
    return save(fig, out, "theory")


def linear_vs_softmax(curves: dict, lengths: list[int], names: dict, train_length: int,
                      out: pathlib.Path) -> list[str]:
    """(9) Linear attention vs softmax attention, all trained at the training L."""
    fig, ax = plt.subplots(figsize=(8.4, 4.0))
    for k, label in names.items():
        ax.plot(lengths, curves[k], "o-", ms=3, label=label)
    if "debiased_gd" in curves:
        ax.plot(lengths, curves["debiased_gd"], "k--", label=EST_STYLE["debiased_gd"][0])
    _train_length_marker(ax, train_length)
    ax.set_xlabel("Prompt length L")
    ax.set_ylabel("Test MSE (incl. σ²)")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_title(f"Linear vs softmax attention (trained at L = {train_length})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, out, "linear_vs_softmax")


def softmax_norm_histograms(hists: list[dict], out: pathlib.Path) -> list[str]:
    """(10) Why L̃ works: ``‖softmax(s·x_lᵀx_q)‖₂`` over draws, against ``1/sqrt(L)`` (uniform).

    ``hists``: one panel per dict ``{"title", "series": [{"label", "length", "norms"}]}``.
    """
    fig, axes = plt.subplots(1, len(hists), figsize=(5.0 * len(hists), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], hists, strict=True):
        colors = plt.cm.viridis(np.linspace(0.0, 0.8, len(panel["series"])))
        for ser, c in zip(panel["series"], colors, strict=True):
            ax.hist(ser["norms"], bins=60, density=True, alpha=0.55, color=c, label=ser["label"])
            ax.axvline(1.0 / np.sqrt(ser["length"]), color=c, ls="--", lw=0.8)
        ax.set_xlabel("‖softmax‖₂ (dashed: uniform attention, 1/√L)")
        ax.set_ylabel("density")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3)
        ax.set_title(panel["title"], fontsize=9)
    return save(fig, out, "softmax_norm_histograms")


def activations(models: dict, train_length: int, out: pathlib.Path) -> list[str]:
    """(11) Activation ablation: per-head ω and μ of models whose exp was replaced by f.

    ``models``: label -> ``{"omega": [H], "mu": [H], "mse": float, "eta_eff": float}``.
    """
    fig, axes = plt.subplots(2, len(models), figsize=(3.2 * len(models), 5.2), squeeze=False,
                             sharey="row")
    for col, (label, m) in enumerate(models.items()):
        h = np.arange(1, len(m["omega"]) + 1)
        for row, (key, name) in enumerate((("omega", "ω_h (mean KQ diagonal)"),
                                           ("mu", "μ_h (last OV entry)"))):
            ax = axes[row, col]
            v = np.asarray(m[key])
            ax.bar(h, v, color=np.where(v >= 0, "#A32015", "#0D2758"))
            ax.axhline(0.0, color="k", lw=0.6)
            ax.set_xticks(h)
            ax.set_xlabel("head")
            if col == 0:
                ax.set_ylabel(name)
        axes[0, col].set_title(f"{label}\nMSE at L={train_length}: {m['mse']:.3f}, "
                               f"η_eff {m['eta_eff']:.2f}", fontsize=8)
    fig.suptitle("Activation ablation: exp in the attention replaced by f, then normalised",
                 fontsize=10)
    return save(fig, out, "activation_ablation")

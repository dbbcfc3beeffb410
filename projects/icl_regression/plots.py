"""The figure set (PNG and PDF), each with the paper's quantity on its axes."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm  # noqa: E402

CMAP = LinearSegmentedColormap.from_list("icl", ["#0D2758", "#FFFFFF", "#A32015"])
EST_STYLE = {
    "gd": ("GD (exact-optimal η)", "tab:green", "--"),
    "debiased_gd": ("debiased GD (η*)", "black", "--"),
    "bayes": ("Bayes-optimal ridge", "tab:purple", ":"),
    "multihead": ("idealised multi-head TF (0.13, 3.45)", "tab:gray", "-."),
    "single_head": ("single-head NW (μ tuned per L)", "tab:brown", "-."),
}


def save(fig, out: pathlib.Path, name: str) -> list[str]:
    """Save ``name.png`` and ``name.pdf`` under ``out``; returns the two file names."""
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=130)
    fig.savefig(out / f"{name}.pdf")
    plt.close(fig)
    return [f"{name}.png", f"{name}.pdf"]


def mse_vs_length(curves: dict, lengths: list[int], train_length: int, heads: list[int],
                  out: pathlib.Path) -> list[str]:
    """(1) Test MSE vs prompt length L: trained H-head models and the estimators."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(heads)))
    for h, c in zip(heads, colors, strict=True):
        ax.plot(lengths, curves[f"H{h}"], "o-", color=c, ms=3, label=f"trained TF, H={h}")
    for k, (label, color, ls) in EST_STYLE.items():
        if k in curves:
            ax.plot(lengths, curves[k], ls, color=color, label=label)
    ax.axvline(train_length, color="0.6", lw=0.8)
    ax.text(train_length, ax.get_ylim()[1] * 0.95, " train L", color="0.4", fontsize=8, va="top")
    ax.set_xlabel("Prompt Length L")
    ax.set_ylabel("Test MSE (incl. σ²)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Estimator comparison")
    return save(fig, out, "mse_vs_length")


def mse_vs_heads(mse_at_train: dict, heads: list[int], refs: dict, out: pathlib.Path) -> list[str]:
    """(2) Test MSE at the training length vs number of heads."""
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    ax.plot(heads, [mse_at_train[f"H{h}"] for h in heads], "o-", color="tab:blue",
            label="trained TF")
    for k in ("debiased_gd", "bayes", "single_head"):
        if k in refs:
            label, color, ls = EST_STYLE[k]
            ax.axhline(refs[k], color=color, ls=ls, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.set_xlabel("Number of heads H")
    ax.set_ylabel("Test MSE at training L")
    ax.legend(fontsize=7)
    return save(fig, out, "mse_vs_heads")


def circuits(kq: np.ndarray, ov: np.ndarray, d: int, title: str, name: str,
             out: pathlib.Path) -> list[str]:
    """(3) Per-head KQ ``[H, D, D]`` and OV ``[H, N, D]`` heatmaps (dashed x / y split)."""
    h = kq.shape[0]
    fig, axes = plt.subplots(2, h, figsize=(max(2.3 * h + 0.6, 5.0), 3.9), squeeze=False,
                             gridspec_kw={"height_ratios": [kq.shape[1], 1.6 * ov.shape[1]]})
    for i in range(h):
        for row, mat, lab in ((0, kq[i], "KQ"), (1, ov[i], "OV")):
            ax = axes[row, i]
            v = float(np.abs(mat).max()) or 1.0
            im = ax.imshow(mat, cmap=CMAP, norm=TwoSlopeNorm(0.0, -v, v), aspect="auto")
            ax.axvline(d - 0.5, color="k", ls="--", lw=0.7)
            if row == 0:
                ax.axhline(d - 0.5, color="k", ls="--", lw=0.7)
            ax.set_title(f"head {i + 1}: {lab}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8 if h > 1 else 7, wrap=True)
    return save(fig, out, name)


def pattern_bars(metrics: dict, heads: list[int], out: pathlib.Path) -> list[str]:
    """(4) Pattern metrics per number of heads (averaged over non-dummy heads)."""
    keys = [("kq_diag_ratio", "KQ diag ratio"), ("ov_last_ratio", "OV last-entry ratio"),
            ("kq_offdiag_ratio", "KQ off-diag / diag"), ("ov_zero_sum_rel", "|Σμ| / Σ|μ|"),
            ("omega_abs_cv", "std|ω| / mean|ω|")]
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    x = np.arange(len(heads))
    w = 0.8 / len(keys)
    for j, (k, label) in enumerate(keys):
        vals = [metrics[f"H{h}"][k] for h in heads]
        ax.bar(x + (j - len(keys) / 2 + 0.5) * w, vals, w, label=label)
    ax.set_xticks(x, [f"H={h}" for h in heads])
    ax.set_ylabel("Ratio")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("Pattern metrics (non-dummy heads)")
    return save(fig, out, "pattern_metrics")


def dynamics(trained: dict, flow2: dict, flow4: dict, gamma_ref: float, mu_ref: float,
             out: pathlib.Path) -> list[str]:
    """(5) ω and μ per head during training vs gradient flow of L̃ (H = 2 and H = 4)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4))
    for col, (name, tr) in enumerate(trained.items()):
        if col > 0:
            break
        steps = np.asarray(tr["step"])
        om, mu = np.asarray(tr["omega"]), np.asarray(tr["mu"])
        for h in range(om.shape[1]):
            axes[0, 0].plot(steps, om[:, h], label=f"head {h + 1}")
            axes[1, 0].plot(steps, mu[:, h], label=f"head {h + 1}")
        pos = np.where(om[-1] > 0, 1.0, 0.0)
        axes[1, 0].plot(steps, (mu * pos).sum(1), "k:", label="sum of positive heads")
        axes[0, 0].set_title(f"trained {name} (Adam)", fontsize=9)
        axes[1, 0].set_xlabel("Training steps")
    for col, (fl, title) in ((1, (flow2, "gradient flow on L̃, H=2")),
                             (2, (flow4, "gradient flow on L̃, H=4"))):
        fl_d, t = fl, title
        time = np.asarray(fl_d["time"])
        om, mu = np.asarray(fl_d["omega"]), np.asarray(fl_d["mu"])
        for h in range(om.shape[1]):
            axes[0, col].plot(time[1:], om[1:, h], label=f"head {h + 1}")
            axes[1, col].plot(time[1:], mu[1:, h], label=f"head {h + 1}")
        pos = np.where(om[-1] > 0, 1.0, 0.0)
        axes[1, col].plot(time[1:], (mu * pos).sum(1)[1:], "k:", label="sum of positive heads")
        axes[0, col].set_title(f"{t} (σ²={fl_d['sigma2']})", fontsize=9)
        for r in (0, 1):
            axes[r, col].set_xscale("log")
        axes[1, col].set_xlabel("Time (steps × lr)")
    for c in range(3):
        for v in (0.0, gamma_ref, -gamma_ref):
            axes[0, c].axhline(v, color="k", ls="--", lw=0.6)
        for v in (0.0, mu_ref, -mu_ref):
            axes[1, c].axhline(v, color="k", ls="--", lw=0.6)
        axes[0, c].set_ylabel("Average of Diagonal Elements of KQ (ω)")
        axes[1, c].set_ylabel("Value of the Last Element of OV (μ)")
        axes[1, c].legend(fontsize=6)
    return save(fig, out, "dynamics")


def noniso(kq: np.ndarray, ov: np.ndarray, d: int, cov: np.ndarray, learned: np.ndarray,
           mse: dict, cos: dict, out: pathlib.Path) -> list[str]:
    """(6) Non-isotropic x ~ N(0, Σ): learned KQ blocks vs Σ⁻¹, and the MSE of the predictors."""
    h = kq.shape[0]
    fig, axes = plt.subplots(1, h + 3, figsize=(3.0 * (h + 3), 3.2))
    mats = [(kq[i, :d, :d], f"head {i + 1}: KQ[:d,:d], μ={ov[i, 0, d]:+.2f}") for i in range(h)]
    inv = np.linalg.inv(cov)
    mats += [(learned, "sign-aligned mean (learned γΩ)"), (inv, "Σ⁻¹")]
    for ax, (m, t) in zip(axes, mats, strict=False):
        v = float(np.abs(m).max())
        im = ax.imshow(m, cmap=CMAP, norm=TwoSlopeNorm(0.0, -v, v))
        ax.set_title(t, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[-1]
    names = list(mse)
    ax.bar(range(len(names)), [mse[k] for k in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("Test MSE")
    ax.set_title(f"cos(Ω, Σ⁻¹)={cos['inv']:.3f}, cos(Ω, I)={cos['eye']:.3f}", fontsize=8)
    return save(fig, out, "noniso_preconditioned_gd")


def multitask(models: dict, subsets: list, out: pathlib.Path) -> list[str]:
    """(7) Two-task superposition: per-head ω per coordinate and OV bottom block μ."""
    n = len(models)
    fig, axes = plt.subplots(n, 2, figsize=(8.0, 2.2 * n + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.3]})
    for r, (name, m) in enumerate(models.items()):
        for c, (mat, t, xl) in enumerate(((m["omega_coords"], "ω per coordinate", "coordinate i"),
                                         (m["mu"], "μ (OV bottom block)", "task n"))):
            ax = axes[r, c]
            mat = np.asarray(mat)
            v = float(np.abs(mat).max()) or 1.0
            im = ax.imshow(mat, cmap=CMAP, norm=TwoSlopeNorm(0.0, -v, v), aspect="auto")
            for (i, j), val in np.ndenumerate(mat):
                ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6)
            ax.set_yticks(range(mat.shape[0]), [f"h{k + 1}" for k in range(mat.shape[0])])
            ax.set_xticks(range(mat.shape[1]), [str(k + 1) for k in range(mat.shape[1])])
            ax.set_xlabel(xl, fontsize=8)
            ax.set_title(f"{name}: {t}; MSE per task {np.round(m['mse_per_task'], 3).tolist()}"
                         if c == 0 else t, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Two-task regression, S₁=" + str([s + 1 for s in subsets[0]]) + ", S₂="
                 + str([s + 1 for s in subsets[1]] if len(subsets) > 1 else ""), fontsize=9)
    return save(fig, out, "multitask_superposition")


def theory(th: dict, out: pathlib.Path) -> list[str]:
    """(8) Theory: μ_γ and 2γμ_γ vs γ, L̃ on the manifold, proportional-limit risks, L̃ error."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    g = np.asarray(th["gamma"])
    ax = axes[0]
    ax.plot(g, th["mu_gamma"], label="μ_γ")
    ax2 = ax.twinx()
    ax2.plot(g, th["eta_gamma"], color="tab:red", label="2γμ_γ")
    ax2.axhline(th["eta_star"], color="tab:red", ls=":", lw=0.8)
    ax.axvline(th["gamma_ref"], color="k", ls="--", lw=0.6)
    ax.set_xlabel("γ (|ω| on the manifold)")
    ax.set_ylabel("μ_γ")
    ax2.set_ylabel("effective step 2γμ_γ (dotted: η*)")
    ax.set_title("Solution manifold S_γ", fontsize=9)
    ax = axes[1]
    ax.plot(g, th["manifold_loss"])
    ax.axhline(th["dgd_risk"], color="k", ls="--", lw=0.8, label="debiased GD risk (η*)")
    ax.set_xlabel("γ")
    ax.set_ylabel("L̃ on S_γ")
    ax.legend(fontsize=7)
    ax.set_title("Minimum at γ → 0⁺ (Theorem 1.2)", fontsize=9)
    ax = axes[2]
    xi = np.asarray(th["xi"])
    ax.plot(xi, th["prop_gd"], label="debiased GD (η*), limit")
    ax.plot(xi, th["prop_bayes"], label="Bayes (ridge), limit")
    ax.set_xlabel("ξ = d / L")
    ax.set_ylabel("Risk (incl. σ²)")
    ax.legend(fontsize=7, loc="upper left")
    ax3 = ax.twinx()
    ax3.plot(xi, th["prop_ratio"], "k:", label="risk ratio GD / Bayes")
    ax3.plot(xi, th["prop_bound"], "r--", label="Theorem 1.3 bound")
    ax3.set_ylabel("ratio")
    ax3.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Proportional limit, σ²={th['prop_sigma2']}", fontsize=9)
    ax = axes[3]
    diff = np.asarray(th["heat_diff"])
    im = ax.imshow(diff, origin="lower", cmap=CMAP, norm=TwoSlopeNorm(0.0, -0.12, 0.12),
                   extent=[th["heat_w"][0], th["heat_w"][-1], th["heat_m"][0], th["heat_m"][-1]],
                   aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("ω (heads ω, -ω)")
    ax.set_ylabel("μ (heads μ, -μ)")
    ax.set_title("true loss − L̃ (Monte-Carlo)", fontsize=9)
    return save(fig, out, "theory")


def linear_vs_softmax(curves: dict, lengths: list[int], names: dict, train_length: int,
                      out: pathlib.Path) -> list[str]:
    """(9) Linear attention vs softmax attention, all trained at the training L."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for k, label in names.items():
        ax.plot(lengths, curves[k], "o-", ms=3, label=label)
    if "debiased_gd" in curves:
        ax.plot(lengths, curves["debiased_gd"], "k--", label="debiased GD (η*)")
    ax.axvline(train_length, color="0.6", lw=0.8)
    ax.set_xlabel("Prompt Length L")
    ax.set_ylabel("Test MSE (incl. σ²)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return save(fig, out, "linear_vs_softmax")


def softmax_norm_histograms(hists: list[dict], out: pathlib.Path) -> list[str]:
    """(10) Why L̃ works: ``‖softmax(s·x_lᵀx_q)‖₂`` over draws, against ``1/sqrt(L)`` (uniform).

    ``hists``: one panel per dict ``{"title", "series": [{"label", "length", "norms"}]}``.
    """
    fig, axes = plt.subplots(1, len(hists), figsize=(5.0 * len(hists), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], hists, strict=True):
        colors = plt.cm.viridis(np.linspace(0.0, 0.8, len(panel["series"])))
        for ser, c in zip(panel["series"], colors, strict=True):
            ax.hist(ser["norms"], bins=60, density=True, alpha=0.55, color=c, label=ser["label"])
            ax.axvline(1.0 / np.sqrt(ser["length"]), color=c, ls="--", lw=0.8)
        ax.set_xlabel("Norm ‖softmax‖₂ (dashed: uniform, 1/√L)")
        ax.set_ylabel("density")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        ax.set_title(panel["title"], fontsize=9)
    return save(fig, out, "softmax_norm_histograms")


def activations(models: dict, out: pathlib.Path) -> list[str]:
    """(11) Activation ablation: per-head ω and μ of models whose exp was replaced by f.

    ``models``: label -> ``{"omega": [H], "mu": [H], "mse": float, "eta_eff": float}``.
    """
    fig, axes = plt.subplots(2, len(models), figsize=(3.2 * len(models), 5.0), squeeze=False)
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
        axes[0, col].set_title(f"{label}\nMSE@L {m['mse']:.3f}, η_eff {m['eta_eff']:.2f}",
                               fontsize=8)
    return save(fig, out, "activation_ablation")

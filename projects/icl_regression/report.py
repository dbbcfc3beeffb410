"""report.md: our numbers beside the paper's, with the gaps stated."""

from __future__ import annotations

import ml_collections

from projects.icl_regression.paper import PAPER


def _f(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_f(x, nd) for x in v) + "]"
    return f"{v:.{nd}f}"


def _active(s: dict, h: int, key: str) -> list:
    """Per-head values ``s["patterns"]["H<h>"][key]`` of the non-dummy heads."""
    p = s["patterns"][f"H{h}"]
    return [v for v, dummy in zip(p[key], p["dummy"], strict=True) if not dummy]


def render(s: dict, config: ml_collections.ConfigDict, heads: list[int]) -> str:
    """Markdown report of one run (``s`` is the summary) beside :data:`PAPER`."""
    L = str(config.length)
    mse = s["mse"]
    paper = PAPER
    pm = paper["mse"]
    at = lambda name: " / ".join(_f(pm[name][n]) for n in ("10", "40", "100"))
    lines = [
        "# icl_regression: In-Context Linear Regression Demystified (He et al. 2025)",
        "",
        f"Run: {s['steps']} Adam steps (lr {config.lr}, batch {config.batch}) of every model in "
        f"one compiled program; d = {config.d}, L = {config.length}, σ² = {config.sigma2}; "
        f"seeds {list(config.seeds)}; training {s['train_seconds']} s, total {s['total_seconds']} s."
        " The paper trains 5·10⁵ steps (lr 1e-3); its trained-model numbers below have the "
        "notebook's +0.1 offset removed. All MSEs include the irreducible σ².",
        "",
        "## Test MSE vs prompt length (trained at L = " + L + ")",
        "",
        "| model | " + " | ".join(f"L={n} ours / paper" for n in ("10", "40", "100")) + " |",
        "|---|---|---|---|",
    ]
    rows = [f"H{h}" for h in heads] + ["multihead", "gd", "debiased_gd", "single_head", "bayes"]
    for r in rows:
        if r not in mse:
            continue
        cells = []
        for n in ("10", "40", "100"):
            ours = mse[r].get(n)
            ref = pm.get(r, {}).get(n)
            cells.append(f"{_f(ours)} / {_f(ref)}")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Exact finite-L risks (ours, closed form): GD at its optimal step "
        + _f([mse["gd_exact"].get(n) for n in ("10", "40", "100")])
        + "; debiased GD at η* " + _f([mse["debiased_gd_exact"].get(n) for n in ("10", "40", "100")])
        + (("; Bayes (posterior variance, MC over X) "
            + _f([mse["bayes_exact"].get(n) for n in ("10", "40", "100")]))
           if "bayes_exact" in mse else "")
        + f". η* = {s['eta_star']:.4f} (paper {paper['eta_star']}).",
        "",
        "Our `gd` uses the exact optimal step at each L and `debiased_gd` η*(L); the official "
        f"notebook keeps η = 2·{paper['omega_abs']}·{paper['mu_trained']} = "
        f"{2 * paper['omega_abs'] * paper['mu_trained']:.3f} at every L, which explains its "
        "larger GD errors at "
        "L = 10. Closed form with that fixed η, L = 10 / 40 / 100: GD "
        + _f([mse["gd_paper_eta_exact"].get(n) for n in ("10", "40", "100")])
        + f" (paper {at('gd')}), debiased GD "
        + _f([mse["debiased_gd_paper_eta_exact"].get(n) for n in ("10", "40", "100")])
        + f" (paper {at('debiased_gd')}).",
        "",
    ]
    multi = [f"H{h}" for h in heads if h >= 2 and f"H{h}" in mse]
    dgd = mse["debiased_gd"][L]
    if multi:
        gaps = {m: (mse[m][L] - dgd) / dgd for m in multi}
        ok = all(abs(g) <= 0.05 for g in gaps.values())
        lines += [
            "**Claim: trained multi-head ≈ debiased GD (within 5%) at L = " + L + "**: "
            + ", ".join(f"{m} {100 * g:+.1f}%" for m, g in gaps.items())
            + (" — holds." if ok else " — NOT within 5% in this run (see gaps below)."),
            "",
        ]
    if "H1" in mse and multi:
        lines += [f"Single head clearly worse: H1 {_f(mse['H1'][L])} vs multi-head "
                  f"{_f(min(mse[m][L] for m in multi))}; Bayes below both: {_f(mse['bayes'][L])}.",
                  ""]
    lines += ["## Circuits (seed " + str(config.seeds[0]) + ")", "",
              "| H | ω per head | μ per head | KQ offdiag/diag | abs(Σμ) (rel. to Σ abs μ) | Σ₊μ | "
              "std/mean of abs ω | KQ diag ratio (paper) | OV last ratio (paper) | dummy heads |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for h in heads:
        p = s["patterns"][f"H{h}"]
        lines.append(
            f"| {h} | {_f(p['omega'])} | {_f(p['mu'], 2)} | {_f(p['kq_offdiag_ratio'])} | "
            f"{_f(p['ov_zero_sum_abs'])} ({_f(p['ov_zero_sum_rel'])}) | {_f(p['mu_pos_sum'], 2)} | "
            f"{_f(p['omega_abs_cv'])} | {_f(p['kq_diag_ratio'], 4)} "
            f"({_f(paper['kq_diag_ratio'].get(f'H{h}'), 4)}) | {_f(p['ov_last_ratio'], 4)} "
            f"({_f(paper['ov_last_ratio'].get(f'H{h}'), 4)}) | {p['n_dummy']} |")
    multi_h = [h for h in heads if h >= 2]
    if multi_h:
        offd = {h: s["patterns"][f"H{h}"]["kq_offdiag_ratio"] for h in multi_h}
        zs = {h: s["patterns"][f"H{h}"]["ov_zero_sum_rel"] for h in multi_h}
        lines += [
            "",
            "**Claim: KQ off-diagonal mass under 10% of the diagonal** (‖offdiag‖_F / ‖diag‖₂ "
            "over non-dummy heads): " + ", ".join(
                f"H{h} {v:.3f} {'✓' if v < 0.1 else '✗'}" for h, v in offd.items())
            + ". The paper's diag ratios (" + ", ".join(
                f"{h} {v}" for h, v in paper["kq_diag_ratio"].items()) + ") correspond to "
            "0.038 / 0.038 / 0.21 on this scale. Per non-dummy head (a head with a small |μ_h| "
            "feels a weak pull towards a diagonal KQ): " + "; ".join(
                f"H{h} " + _f(_active(s, h, "kq_offdiag_per_head")) + " at |μ| "
                + _f([abs(m) for m in _active(s, h, "mu")], 2) for h in multi_h)
            + ". Weighted by |μ_h| (the heads' share of the prediction; not the paper's "
            "metric): " + ", ".join(
                f"H{h} {s['patterns'][f'H{h}']['kq_offdiag_ratio_mu_weighted']:.3f}"
                for h in multi_h) + ". To first order in the logits the prediction depends on "
            "the heads only through Γ = Σ_h μ_h KQ_h[:d, :d] (ŷ ≈ (1/L) Σ_l y_l (x_l - x̄)ᵀ Γ x_q "
            "once Σμ ≈ 0), so heads can trade off-diagonal mass among themselves; Γ's "
            "off-diagonal / diagonal: " + ", ".join(
                f"H{h} {s['patterns'][f'H{h}']['gamma_offdiag_ratio']:.3f}" for h in multi_h)
            + ".",
            "",
            "**Claim: OV μ sums to ~0 across heads** (abs(Σμ) / Σ abs μ): " + ", ".join(
                f"H{h} {v:.3f} {'✓' if v < 0.05 else '✗'}" for h, v in zs.items()) + ".",
        ]
    lines += [
        "",
        f"Paper at convergence (5·10⁵ steps): |ω| ≈ {paper['omega_abs']}, Σ₊μ ≈ "
        f"{paper['mu_pos_sum']} for every H ≥ 2. |ω| first rises, then slowly falls towards the "
        "limit while Σ₊μ grows (≥150k steps); a shorter run stops on that slow drift with larger "
        "|ω| and smaller Σ₊μ but the same effective step Σ_h ω_h μ_h "
        + "(ours: " + ", ".join(f"H{h} {s['patterns'][f'H{h}']['eta_eff']:.3f}" for h in heads)
        + f"; η* = {s['eta_star']:.3f}).",
        "",
        "## Theory",
        "",
        f"- μ_γ at γ = {config.theory.gamma_ref}: {s['theory']['mu_gamma_at_gamma_ref']:.3f} "
        f"(paper's trained μ {paper['mu_trained']}; 2γμ_γ = {paper['eta_star']}).",
        f"- Gradient flow on L̃/2, H = 2, init ±1e-3, lr {config.theory.flow_lr}: at time "
        f"{s['theory']['flow2_final']['time']:.0f}: ω = {_f(s['theory']['flow2_final']['omega'])}, "
        f"μ = {_f(s['theory']['flow2_final']['mu'])}, Σ_h ω_h μ_h = "
        f"{s['theory']['flow2_final']['eta_eff']:.3f} (spec's re-run at t = 3000: ω = ±0.171, "
        "μ = ±2.57).",
        f"- H = 4 flow (σ² = {config.theory.flow_h4_sigma2}, random init): final ω = "
        f"{_f(s['theory']['flow4_final']['omega'])}, μ = {_f(s['theory']['flow4_final']['mu'])}.",
        f"- max |true loss − L̃| on the heatmap grid (ω ≤ 0.2, μ ≤ 6): "
        f"{s['theory']['heatmap_max_abs_true_minus_approx']:.3f}.",
        "- Softmax-norm histograms (figure `softmax_norm_histograms`): median "
        "‖softmax(s·x_lᵀx_q)‖₂·√L (1 = uniform attention): " + "; ".join(
            f"{k} {v:.2f}" for k, v in s["theory"]["softmax_norm_median_times_sqrt_L"].items())
        + ". The attention vector flattens as L grows with d fixed, which is what L̃ assumes.",
        "",
    ]
    if "noniso" in s:
        n = s["noniso"]
        lines += ["## Non-isotropic covariates (preconditioned GD)", "",
                  f"Σ = {config.noniso.covariance}; cos(learned Ω, Σ⁻¹) = "
                  f"{n['cos_learned_vs_inv_cov']:.3f} vs cos(learned Ω, I) = "
                  f"{n['cos_learned_vs_identity']:.3f}; μ per head {_f(n['mu'], 2)}.", "",
                  "| predictor | MSE at L = " + L + " |", "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in n["mse_L"].items()]
        lines += ["", "The paper states Ω ≈ Σ⁻¹ (no numbers published).", ""]
    if "multitask" in s:
        mt = s["multitask"]
        lines += ["## Two-task superposition", "",
                  f"d = {config.multitask.d}, subsets {list(config.multitask.subsets)} (0-based), "
                  "β shared across tasks as in the blog (the official notebook draws independent "
                  "per-task β, L = 48 and noise-free y_q).", "",
                  "| model | MSE per task | ω per coordinate (per head) | μ block (per head) |",
                  "|---|---|---|---|"]
        for k, v in mt.items():
            if k.startswith("mt_"):
                lines.append(f"| {k} | {_f(v['mse_per_task'])} | {_f(v['omega_coords'], 2)} | "
                             f"{_f(v['mu'], 2)} |")
        lines += ["", "Per-task estimators: " + "; ".join(
            f"{k} {_f(v)}" for k, v in mt["estimators_per_task"].items()), ""]
    lin = [k for k in mse if k.startswith("lin_")]
    if lin:
        k = lin[0]
        lines += ["## Linear attention baseline", "",
                  f"{k}: MSE at L = 10 / {L} / 100: {_f([mse[k].get(n) for n in ('10', L, '100')])}"
                  " (paper: learns one-step GD at the training length, error rises for L > "
                  "training L because of its hard-coded 1/L).", ""]
    if "activation" in s:
        lines += ["## Activation ablation (exp replaced by f, then normalised)", "",
                  "The blog reports the same ± sign-matched, last-entry-only, zero-sum patterns "
                  "for f = 1+Cx, (1+Cx)², 1+tanh x, with effective step η_eff = 2·C_f·‖ω‖∞·‖μ‖∞ "
                  "(no numbers, no code, C not given). Ours: η_eff = C_f·Σ_h ω_h μ_h, "
                  "C_f = f'(0)/f(0); softmax has C_f = 1.", "",
                  "| model | MSE at L = " + L + " | ω per head | μ per head | KQ offdiag/diag | "
                  "OV last ratio | sign match | abs(Σμ)/Σ abs μ | η_eff |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, a in s["activation"].items():
            lines.append(
                f"| {k} | {_f(a['mse'])} | {_f(a['omega'])} | {_f(a['mu'], 2)} | "
                f"{_f(a['kq_offdiag_ratio'])} | {_f(a['ov_last_ratio'], 4)} | "
                f"{_f(a['sign_match'], 2)} | {_f(a['ov_zero_sum_rel'])} | {_f(a['eta_eff'])} |")
        lines += ["", f"η* = {s['eta_star']:.3f}. `affine` is clipped at 0 (max(1+Cx, 0)) so "
                  "that the normaliser cannot cross zero; it equals 1+Cx while every logit is "
                  "above -1/C. With f = 1+Cx even one head can realise debiased GD (Σ_l(1+Cν_l)y_l / "
                  "Σ_l(1+Cν_l) subtracts the mean by itself), so a ± pair is not forced there.",
                  ""]
    act = [(w, m) for h in multi_h for w, m, dm in zip(
        s["patterns"][f"H{h}"]["omega"], s["patterns"][f"H{h}"]["mu"],
        s["patterns"][f"H{h}"]["dummy"], strict=True) if not dm]
    mean_w = sum(abs(w) for w, _ in act) / max(len(act), 1)
    pos = [s["patterns"][f"H{h}"]["mu_pos_sum"] for h in multi_h]
    mean_pos = sum(pos) / max(len(pos), 1)
    reached = abs(mean_w - paper["omega_abs"]) < 0.1 * paper["omega_abs"] and abs(
        mean_pos - paper["mu_pos_sum"]) < 0.1 * paper["mu_pos_sum"]
    lines += [
        "## Gaps and deviations",
        "",
        f"- Slow drift: over the multi-head models' active heads mean |ω| = {mean_w:.3f} "
        f"(paper limit {paper['omega_abs']}) and mean Σ₊μ = {mean_pos:.2f} (paper "
        f"{paper['mu_pos_sum']}) after {s['steps']} steps (paper: 5·10⁵); "
        + ("within 10% of the paper's limits." if reached else
           "not yet at the limits: |ω| is still falling and Σ₊μ rising (≳150k steps at lr 1e-3)"
           ", while the MSE and the effective step are already converged."),
        "- ω uses the model's own 1/√(d+1) scale; the official dynamics plots divide by √(d+2) "
        "(0.926× smaller).",
        "- `single_head` re-tunes the NW μ per L; `single_head_nb` keeps μ tuned at the training "
        f"L as the official notebook does (its L = 10 cell {pm['single_head']['10']}).",
        *(["- This run uses lr " + str(config.lr) + " (the paper 1e-3) to form the patterns in "
            "a few thousand steps on a 2-core CPU (the quick config)."]
          if config.lr != 1e-3 else []),
        *(["- KQ off-diagonal mass lies above 10% of the diagonal for "
           + ", ".join(f"H{h}" for h in multi_h
                       if s["patterns"][f"H{h}"]["kq_offdiag_ratio"] >= 0.1)
           + ": it sits in the heads with small |μ_h| (per-head values above), whose KQ feels "
           "a weak pull and decays slowly with training (measurements in the project README)."]
          if any(s["patterns"][f"H{h}"]["kq_offdiag_ratio"] >= 0.1 for h in multi_h) else []),
        "- Two-task data follow the blog (shared β, noisy y_q, L = 40), not the notebook.",
        "",
        "Figures: figures/*.png and *.pdf.",
    ]
    return "\n".join(lines) + "\n"

"""report.md: our numbers beside the paper's, with the gaps stated; the claims and their verdicts.

:func:`claims` is the one place where the paper's claims are tested against a run (thresholds
in :data:`THRESHOLDS`); the report's claim table, the pattern figure's reference lines and the
closing lines of ``headlab run`` (``run.headline``) all read its result.
"""

from __future__ import annotations

import ml_collections

from projects.icl_regression.paper import PAPER

# The thresholds of the claims (spec §6 and §12: "state claims as numeric assertions").
THRESHOLDS = {
    "mse_vs_debiased_gd": 0.05,  # |MSE(H) / MSE(debiased GD) - 1| at the training length, H ≥ 2
    "single_head_worse": 1.0,  # MSE(H1) / max_{H ≥ 2} MSE(H) at the training length
    "kq_offdiag_ratio": 0.10,  # ‖offdiag‖_F / ‖diag‖₂ of KQ[:d, :d], active heads
    "ov_last_ratio": 0.99,  # |μ_h| / ‖OV_h‖₂, mean over active heads
    "sign_match": 1.0,  # fraction of active heads with sign ω_h = sign μ_h
    "ov_zero_sum_rel": 0.05,  # |Σ_h μ_h| / Σ_h |μ_h|, H ≥ 2
    "omega_abs_cv": 0.05,  # std |ω_h| / mean |ω_h| over active heads, H ≥ 2
}


def _f(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_f(x, nd) for x in v) + "]"
    return f"{v:.{nd}f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _active(s: dict, h: int, key: str) -> list:
    """Per-head values ``s["patterns"]["H<h>"][key]`` of the non-dummy heads."""
    p = s["patterns"][f"H{h}"]
    return [v for v, dummy in zip(p[key], p["dummy"], strict=True) if not dummy]


_OPS = {"<": lambda v, t: v < t, ">": lambda v, t: v > t, "≥": lambda v, t: v >= t}


def claims(s: dict) -> list[dict]:
    """The paper's claims tested on one run (``s``: the summary, with ``length`` and ``heads``).

    Each claim: ``{"id", "claim", "test", "op", "threshold", "values" {model: float},
    "shown" {model: str}, "holds", "failing" ["H8 0.198", ...]}``; the thresholds are
    :data:`THRESHOLDS`. A claim whose models are absent from the run is left out.
    """
    L, heads = str(s["length"]), list(s["heads"])
    mse, pats = s["mse"], s["patterns"]
    multi = [f"H{h}" for h in heads if h >= 2]
    every = [f"H{h}" for h in heads]
    out = []

    def add(key: str, claim: str, test: str, op: str, values: dict, fmt,
            thr_fmt=lambda t: f"{t:g}", models: str | None = None) -> None:
        """``values``: model -> value; the claim holds when every value passes."""
        if not values:
            return
        thr = THRESHOLDS[key]
        bad = [m for m, v in values.items() if not _OPS[op](v, thr)]
        models = models or ("H ≥ 2" if all(m != "H1" for m in values) else "every H")
        out.append({"id": key, "claim": claim, "test": test, "models": models, "op": op,
                    "threshold": thr,
                    "threshold_shown": thr_fmt(thr), "values": values,
                    "shown": {m: fmt(v) for m, v in values.items()}, "holds": not bad,
                    "failing": [f"{m} {fmt(values[m])}" for m in bad]})

    dgd = mse["debiased_gd"][L]
    add("mse_vs_debiased_gd", "trained multi-head attention ≈ debiased GD",
        f"abs(MSE(H) / MSE(debiased GD) − 1) at L = {L}", "<",
        {m: abs(mse[m][L] / dgd - 1) for m in multi}, _pct, lambda t: f"{100 * t:g}%")
    if "H1" in mse and multi:
        add("single_head_worse", "one head is worse than several",
            f"MSE(H1) / largest MSE of H ≥ 2 at L = {L}", ">",
            {"H1": mse["H1"][L] / max(mse[m][L] for m in multi)}, lambda v: f"{v:.2f}",
            models="H1 against H ≥ 2")
    add("kq_offdiag_ratio", "diagonal KQ (KQ_h[:d, :d] ≈ ω_h·I)",
        "‖offdiag‖_F / ‖diag‖₂ of KQ_h[:d, :d], over active heads", "<",
        {m: pats[m]["kq_offdiag_ratio"] for m in every}, lambda v: f"{v:.3f}")
    add("ov_last_ratio", "last-entry OV (OV_h ≈ [0, …, 0, μ_h])",
        "abs(μ_h) / ‖OV_h‖₂, mean over active heads", ">",
        {m: pats[m]["ov_last_ratio"] for m in every}, lambda v: f"{v:.4f}")
    add("sign_match", "sign matching (sign ω_h = sign μ_h)",
        "share of active heads whose ω_h and μ_h have the same sign", "≥",
        {m: pats[m]["sign_match"] for m in every}, lambda v: f"{v:.2f}")
    add("ov_zero_sum_rel", "zero-sum OV (Σ_h μ_h ≈ 0)",
        "abs(Σ_h μ_h) / Σ_h abs(μ_h)", "<",
        {m: pats[m]["ov_zero_sum_rel"] for m in multi}, lambda v: f"{v:.3f}")
    add("omega_abs_cv", "homogeneous KQ (the same abs(ω_h) in every active head)",
        "std / mean of abs(ω_h) over active heads", "<",
        {m: pats[m]["omega_abs_cv"] for m in multi}, lambda v: f"{v:.3f}")
    return out


def verdict_line(cl: list[dict]) -> str:
    """``"5 of 7 claims hold"`` (the one-line summary of :func:`claims`)."""
    return f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold"


def failing_lines(cl: list[dict]) -> list[str]:
    """One line per failing claim: its name, the failing values and the threshold."""
    return [f"{c['claim']}: " + ", ".join(c["failing"])
            + f" (needs {c['op']} {c['threshold_shown']})" for c in cl if not c["holds"]]


def _sources(config: ml_collections.ConfigDict) -> list[str]:
    d, L, s2 = config.d, config.length, config.sigma2
    return [
        "## Notation and sources",
        "",
        "- Per head h of the trained model: KQ_h = K_hᵀQ_h/√(d+1) (the logit of context token "
        "z_ℓ = [x_ℓ; y_ℓ] for the query z_q = [x_q; 0] is z_ℓᵀ KQ_h z_q) and OV_h = O_h·V_h. "
        "**ω_h** is the mean of the diagonal of KQ_h[:d, :d]; **μ_h** is the last entry of OV_h, "
        "the weight with which head h passes on the labels y_ℓ.",
        "- A head is *dummy* when its share abs(ω_h μ_h) of the effective step is under 5% of "
        "the largest head's; the other heads are *active*. Positive heads have ω_h > 0, "
        "negative heads ω_h < 0. **Σ₊μ** is the sum of μ_h over the active positive heads, "
        "**Σμ** the sum over all heads.",
        "- **Debiased GD** predicts ŷ = (η/L) Σ_ℓ y_ℓ (x_ℓ − x̄)ᵀ x_q, one gradient step from 0 "
        "on centred covariates; **η\\*** = (1 + (1+σ²)d/L)⁻¹ is its best step (the paper's "
        f"Theorem 1), {1 / (1 + (1 + s2) * d / L):.3f} at d = {d}, L = {L}, σ² = {s2}. "
        "**Σ_h ω_h μ_h** is the step that trained heads implement (equal to η\\* when they "
        "realise debiased GD with the best step).",
        "- **L̃(ω, μ)** = 1 + σ² − 2μᵀω + μᵀ(ωωᵀ + (1+σ²)L⁻¹ exp(d·ωωᵀ))μ is the paper's "
        "approximate population loss of the reduced model in which head h is just (ω_h, μ_h); "
        "it is accurate for long prompts and small ω. On the paper's *solution manifold* "
        "every active head has abs(ω_h) = **γ** and Σ₊μ = −Σ₋μ = **μ_γ**.",
        "- *Paper* numbers are those printed by the authors' official notebooks "
        "(`icl_linear.ipynb`, `plots.ipynb` in github.com/XintianPan/ICL_linear, commit "
        "87ed34f), from which the paper's figures are drawn; the trained-model MSEs there have "
        "a +0.1 offset, removed here. *The blog* is the authors' long-form write-up of the paper "
        "(github.com/Y-Agent/Y-Agent.github.io, `content/posts/in_context_regression.md`). "
        "*The spec* is this project's reading of paper, code and blog "
        "(`shared/papers/icl_regression.md` beside the checkout), which records a quick "
        "independent re-run of the official setup.",
        "",
    ]


_MSE_ROWS = {
    "multihead": "idealised two-head TF, ω = ±{g}, μ = ±{m}",
    "gd": "GD, best step at each L",
    "debiased_gd": "debiased GD, η* at each L",
    "single_head_nb": "single-head kernel regressor, μ tuned at L = {L} as in the notebook",
    "single_head": "single-head kernel regressor, μ re-tuned at each L",
    "bayes": "Bayes-optimal (ridge)",
}
# Paper row for each of ours: the notebook's single-head curve keeps μ tuned at L = 40.
_PAPER_ROW = {"single_head_nb": "single_head", "single_head": None}


def render(s: dict, config: ml_collections.ConfigDict, heads: list[int]) -> str:
    """Markdown report of one run (``s`` is the summary) beside :data:`PAPER`."""
    L = str(config.length)
    mse = s["mse"]
    paper = PAPER
    pm = paper["mse"]
    at = lambda name: " / ".join(_f(pm[name][n]) for n in ("10", "40", "100"))
    cl = claims(s)
    multi_h = [h for h in heads if h >= 2]
    quick = s["steps"] < 500_000
    trained = ", ".join(str(h) for h in heads)
    lines = [
        "# icl_regression: In-Context Linear Regression Demystified (He et al. 2025)",
        "",
        f"This run trains one-layer softmax-attention transformers with H = {trained} heads to "
        f"predict the label y_q = βᵀx_q + noise of a query x_q from a prompt of L = {L} "
        f"examples (x_ℓ, y_ℓ) of a fresh random linear task (d = {config.d}, noise variance "
        f"σ² = {config.sigma2}), and checks what the paper (He, Pan, Chen, Yang, ICML 2025, "
        "arXiv 2503.12734) found: trained multi-head attention implements one step of "
        "*debiased gradient descent*. Its heads split into a positive and a negative group, "
        "each with a diagonal key-query circuit (KQ_h ≈ ω_h·I) and an output-value circuit that "
        "reads only the label (μ_h), the μ_h summing to zero; the error then matches debiased GD "
        "with its best step, about twice the Bayes-optimal error, while a single head does "
        f"worse. This run: {s['steps']} Adam steps"
        + (" (the quick CPU config; the paper trains 5·10⁵, so the slow drift of the circuits "
           "is not finished)" if quick else "")
        + f", {s['total_seconds']} s in all. Below: the claims and their verdicts, the test "
        "errors beside the paper's, the circuits, the theory and the extensions; notation and "
        "sources are defined in the next section.",
        "",
        f"**{verdict_line(cl)}.**"
        + ("" if all(c["holds"] for c in cl) else " Failing: " + "; ".join(failing_lines(cl))
           + "."),
        "",
        "| claim | test | models | ours | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in cl:
        lines.append(f"| {c['claim']} | {c['test']} {c['op']} {c['threshold_shown']} | "
                     f"{c['models']} | "
                     + ", ".join(f"{m} {v}" for m, v in c["shown"].items())
                     + f" | {'holds' if c['holds'] else 'fails: ' + ', '.join(c['failing'])} |")
    lines += [""] + _sources(config) + [
        "## Run",
        "",
        f"{s['steps']} Adam steps (lr {config.lr}, batch {config.batch}) of every model in "
        f"one compiled program; d = {config.d}, L = {config.length}, σ² = {config.sigma2}; "
        f"seeds {list(config.seeds)}; training {s['train_seconds']} s, total {s['total_seconds']} s."
        " The paper trains 5·10⁵ steps (lr 1e-3). All MSEs include the irreducible σ², and are "
        f"Monte-Carlo means over {config.eval.n_test} test prompts per length, the same prompts "
        "for every model.",
        "",
        "## Test MSE vs prompt length (trained at L = " + L + ")",
        "",
        "| model | " + " | ".join(f"L={n} ours / paper" for n in ("10", "40", "100")) + " |",
        "|---|---|---|---|",
    ]
    names = {f"H{h}": f"trained, H = {h}" for h in heads}
    names.update({k: v.format(g=paper["omega_abs"], m=paper["mu_trained"], L=L)
                  for k, v in _MSE_ROWS.items()})
    for r, label in names.items():
        if r not in mse:
            continue
        ref_row = _PAPER_ROW.get(r, r)
        cells = []
        for n in ("10", "40", "100"):
            ref = pm.get(ref_row, {}).get(n) if ref_row else None
            cells.append(f"{_f(mse[r].get(n))} / {_f(ref)}")
        lines.append(f"| {label} (`{r}`) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Exact finite-L risks (ours, closed form): GD at its best step "
        + _f([mse["gd_exact"].get(n) for n in ("10", "40", "100")])
        + "; debiased GD at η* " + _f([mse["debiased_gd_exact"].get(n) for n in ("10", "40", "100")])
        + (("; Bayes (posterior variance, Monte-Carlo over X) "
            + _f([mse["bayes_exact"].get(n) for n in ("10", "40", "100")]))
           if "bayes_exact" in mse else "")
        + f". η* = {s['eta_star']:.4f} (paper {paper['eta_star']}).",
        "",
        "Our `gd` uses the exact best step at each L and `debiased_gd` η*(L); the official "
        f"notebook keeps η = 2·{paper['omega_abs']}·{paper['mu_trained']} = "
        f"{2 * paper['omega_abs'] * paper['mu_trained']:.3f} at every L, which explains its "
        "larger GD errors at L = 10. Closed form with that fixed η, L = 10 / 40 / 100: GD "
        + _f([mse["gd_paper_eta_exact"].get(n) for n in ("10", "40", "100")])
        + f" (paper {at('gd')}), debiased GD "
        + _f([mse["debiased_gd_paper_eta_exact"].get(n) for n in ("10", "40", "100")])
        + f" (paper {at('debiased_gd')}).",
        "",
    ]
    if multi_h and "H1" in mse:
        lines += [f"Bayes-optimal error at L = {L}: {_f(mse['bayes'][L])}, against "
                  f"{_f(min(mse[f'H{h}'][L] for h in multi_h))} for the best multi-head model "
                  f"and {_f(mse['H1'][L])} for one head.", ""]
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
    if multi_h:
        lines += [
            "",
            "KQ off-diagonal mass: the paper's diag ratios (" + ", ".join(
                f"{h} {v}" for h, v in paper["kq_diag_ratio"].items()) + ") correspond to "
            "0.038 / 0.038 / 0.21 on our off-diagonal / diagonal scale. Per active head (a head "
            "with a small abs(μ_h) feels a weak pull towards a diagonal KQ): " + "; ".join(
                f"H{h} " + _f(_active(s, h, "kq_offdiag_per_head")) + " at abs(μ) "
                + _f([abs(m) for m in _active(s, h, "mu")], 2) for h in multi_h)
            + ". Weighted by abs(μ_h) (the heads' share of the prediction; not the paper's "
            "metric): " + ", ".join(
                f"H{h} {s['patterns'][f'H{h}']['kq_offdiag_ratio_mu_weighted']:.3f}"
                for h in multi_h) + ". To first order in the logits the prediction depends on "
            "the heads only through Γ = Σ_h μ_h KQ_h[:d, :d] (ŷ ≈ (1/L) Σ_ℓ y_ℓ (x_ℓ − x̄)ᵀ Γ x_q "
            "once Σμ ≈ 0; debiased GD has Γ = η*·I), so heads can trade off-diagonal mass among "
            "themselves; Γ's off-diagonal / diagonal: " + ", ".join(
                f"H{h} {s['patterns'][f'H{h}']['gamma_offdiag_ratio']:.3f}" for h in multi_h)
            + ".",
        ]
    lines += [
        "",
        f"Paper at convergence (5·10⁵ steps): abs(ω) ≈ {paper['omega_abs']}, Σ₊μ ≈ "
        f"{paper['mu_pos_sum']} for every H ≥ 2. abs(ω) first rises, then slowly falls towards "
        "the limit while Σ₊μ grows (≥150k steps); a shorter run stops on that slow drift with "
        "larger abs(ω) and smaller Σ₊μ but the same effective step Σ_h ω_h μ_h "
        + "(ours: " + ", ".join(f"H{h} {s['patterns'][f'H{h}']['eta_eff']:.3f}" for h in heads)
        + f"; η* = {s['eta_star']:.3f}).",
        "",
        "## Theory",
        "",
        f"- μ_γ at γ = {config.theory.gamma_ref}: {s['theory']['mu_gamma_at_gamma_ref']:.3f} "
        f"(paper's trained μ {paper['mu_trained']}; 2γμ_γ = {paper['eta_star']}).",
        f"- Gradient flow on L̃/2, H = 2, init ω = μ = (1e-3, −1e-3), lr {config.theory.flow_lr}: "
        f"at time {s['theory']['flow2_final']['time']:.0f} (steps × lr): "
        f"ω = {_f(s['theory']['flow2_final']['omega'])}, "
        f"μ = {_f(s['theory']['flow2_final']['mu'])}, Σ_h ω_h μ_h = "
        f"{s['theory']['flow2_final']['eta_eff']:.3f} (the spec's re-run at time 3000: "
        "ω = ±0.171, μ = ±2.57).",
        f"- H = 4 flow (σ² = {config.theory.flow_h4_sigma2}, random init): final ω = "
        f"{_f(s['theory']['flow4_final']['omega'])}, μ = {_f(s['theory']['flow4_final']['mu'])}.",
        f"- Largest abs(true loss − L̃) on the heatmap grid (two heads (ω, −ω), (μ, −μ), "
        f"ω ≤ 0.2, μ ≤ 6): {s['theory']['heatmap_max_abs_true_minus_approx']:.3f}.",
        _norm_line(s["theory"]["softmax_norms"]),
        "",
    ]
    if "noniso" in s:
        n = s["noniso"]
        lines += ["## Non-isotropic covariates (preconditioned GD)", "",
                  f"x ~ N(0, Σ) with Σ = {config.noniso.covariance} (Σ_ij = ρ^|i−j|), two heads. "
                  f"The learned Ω is the sign-aligned mean of the heads' KQ[:d, :d]; "
                  f"cos(Ω, Σ⁻¹) = {n['cos_learned_vs_inv_cov']:.3f} vs cos(Ω, I) = "
                  f"{n['cos_learned_vs_identity']:.3f}; μ per head {_f(n['mu'], 2)}.", "",
                  "| predictor | MSE at L = " + L + " |", "|---|---|"]
        lines += [f"| {NONISO_NAMES.get(k, k)} | {_f(v)} |" for k, v in n["mse_L"].items()]
        lines += ["", "The paper states Ω ≈ Σ⁻¹ (no numbers published).", ""]
    if "multitask" in s:
        mt = s["multitask"]
        subsets = [list(t) for t in config.multitask.subsets]
        lines += ["## Two-task superposition", "",
                  f"d = {config.multitask.d}; task n reads the coordinates S_n (0-based, as in "
                  "the figure): " + ", ".join(f"S_{i} = {t}" for i, t in enumerate(subsets))
                  + "; β shared across tasks as in the blog (the official notebook draws "
                  "independent per-task β, L = 48 and noise-free y_q).", "",
                  "| model | MSE per task | ω per coordinate (per head) | μ block (per head) |",
                  "|---|---|---|---|"]
        for k, v in mt.items():
            if k.startswith("mt_"):
                lines.append(f"| {k} | {_f(v['mse_per_task'])} | {_f(v['omega_coords'], 2)} | "
                             f"{_f(v['mu'], 2)} |")
        lines += ["", "Per-task estimators: " + "; ".join(
            f"{MT_NAMES.get(k, k)} {_f(v)}" for k, v in mt["estimators_per_task"].items()), ""]
    lin = [k for k in mse if k.startswith("lin_")]
    if lin:
        k = lin[0]
        lines += ["## Linear attention baseline", "",
                  f"{k}: MSE at L = 10 / {L} / 100: {_f([mse[k].get(n) for n in ('10', L, '100')])}"
                  " (the blog: it learns one-step GD at the training length, and its error rises "
                  "for L > training L because of its hard-coded 1/L).", ""]
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
                  "above -1/C. With f = 1+Cx even one head can realise debiased GD (Σ_ℓ(1+Cν_ℓ)y_ℓ / "
                  "Σ_ℓ(1+Cν_ℓ) subtracts the mean by itself), so a ± pair is not forced there.",
                  ""]
    act = [(w, m) for h in multi_h for w, m, dm in zip(
        s["patterns"][f"H{h}"]["omega"], s["patterns"][f"H{h}"]["mu"],
        s["patterns"][f"H{h}"]["dummy"], strict=True) if not dm]
    mean_w = sum(abs(w) for w, _ in act) / max(len(act), 1)
    pos = [s["patterns"][f"H{h}"]["mu_pos_sum"] for h in multi_h]
    mean_pos = sum(pos) / max(len(pos), 1)
    reached = abs(mean_w - paper["omega_abs"]) < 0.1 * paper["omega_abs"] and abs(
        mean_pos - paper["mu_pos_sum"]) < 0.1 * paper["mu_pos_sum"]
    kq_claim = next((c for c in cl if c["id"] == "kq_offdiag_ratio"), None)
    lines += [
        "## Gaps and deviations",
        "",
        f"- Slow drift: over the multi-head models' active heads mean abs(ω) = {mean_w:.3f} "
        f"(paper limit {paper['omega_abs']}) and mean Σ₊μ = {mean_pos:.2f} (paper "
        f"{paper['mu_pos_sum']}) after {s['steps']} steps (paper: 5·10⁵); "
        + ("within 10% of the paper's limits." if reached else
           "not yet at the limits: abs(ω) is still falling and Σ₊μ rising (≳150k steps at "
           "lr 1e-3), while the MSE and the effective step are already converged."),
        "- ω uses the model's own 1/√(d+1) scale; the official dynamics plots divide by √(d+2) "
        "(0.926× smaller).",
        "- `single_head_nb` keeps the kernel's μ tuned at the training L as the official "
        "notebook does (so it is compared with the notebook's single-head numbers); "
        "`single_head` re-tunes μ at each L, which the paper does not show.",
        *(["- This run uses lr " + str(config.lr) + " (the paper 1e-3) to form the patterns in "
           "a few thousand steps on a 2-core CPU (the quick config)."]
          if config.lr != 1e-3 else []),
        *(["- The KQ off-diagonal claim fails for " + ", ".join(kq_claim["failing"])
           + ": the mass sits in the heads with small abs(μ_h) (per-head values above), whose "
           "KQ feels a weak pull and decays slowly with training (measurements in the project "
           "README)."]
          if kq_claim and not kq_claim["holds"] else []),
        "- Two-task data follow the blog (shared β, noisy y_q, L = 40), not the notebook.",
        "",
        "Figures: figures/*.png and *.pdf.",
    ]
    return "\n".join(lines) + "\n"


NONISO_NAMES = {
    "debiased_gd": "debiased GD, η* (no preconditioner)",
    "precond_debiased_gd": "preconditioned debiased GD, η*·Σ⁻¹",
    "bayes": "Bayes-optimal (ridge)",
}
MT_NAMES = {"debiased_gd": "debiased GD on S_n", "ridge_subset": "ridge on S_n (Bayes)"}


def _norm_line(panels: list[dict]) -> str:
    """The softmax-norm medians, one group per histogram panel."""
    groups = []
    for p in panels:
        cells = ", ".join(f"(L={r['L']}, d={r['d']}) {r['median_times_sqrt_L']:.2f}"
                          for r in p["series"])
        groups.append(f"{p['title']}: {cells}")
    return ("- Softmax-norm histograms (figure `softmax_norm_histograms`): median of "
            "‖softmax(s·x_ℓᵀx_q)‖₂·√L over random draws (1 = uniform attention over the L "
            "tokens), " + "; ".join(groups) + ". With d fixed it grows only slowly with L, "
            "towards a constant (the weights spread over all L tokens, as L̃ assumes); with "
            "L = 8d and the "
            "logit scale s fixed it grows with d, because the logits' spread s·‖x_q‖ grows like "
            "√d: L̃ needs small ω there.")

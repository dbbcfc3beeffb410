"""Experiment entry: ``headlab run icl_regression [--quick]``.

Trains every model (one compiled program), evaluates them and the closed-form predictors over
prompt lengths, extracts the circuits' patterns, runs the theory (L̃, its gradient flow, the
manifold, the proportional limit), draws the figures and writes summary.json and report.md.
Each stage prints a start line and its wall time (``common.progress``); ``headlab run`` ends
with :func:`headline`.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir
from projects.icl_regression import (
    analysis,
    estimators,
    evaluate,
    model,
    plots,
    report,
    spec,
    theory,
    train,
)
from projects.icl_regression.paper import PAPER

PREFIX = "icl_regression"


def headline(summary: dict) -> list[str]:
    """The closing lines of ``headlab run``: MSE at the training length per H beside the paper's,
    and the claims' verdicts (from :func:`report.claims`, as in report.md)."""
    L = str(summary["length"])
    mse, pm = summary["mse"], PAPER["mse"]
    cell = lambda k: f"{mse[k][L]:.3f}" + (f" ({pm[k][L]:.3f})" if L in pm.get(k, {}) else "")
    cl = report.claims(summary)
    failing = report.failing_lines(cl)
    lines = [f"test MSE at L = {L}, ours (paper): "
             + ", ".join(f"H{h} {cell(f'H{h}')}" for h in summary["heads"]),
             f"  debiased GD {cell('debiased_gd')}, Bayes-optimal {cell('bayes')}"
             f" (after {summary['steps']} steps; the paper's 5·10⁵)",
             report.verdict_line(cl) + ("; failing:" if failing else ".")]
    lines += [f"  {f}" for f in failing[:4]]
    if len(failing) > 4:
        lines.append(f"  and {len(failing) - 4} more (report.md)")
    return lines


def _read_history(path: pathlib.Path, model_name: str) -> dict:
    """``{"step", "omega" [T, H], "mu" [T, H]}`` of one model from metrics.jsonl (last write wins)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("model") == model_name:
                rows[r["step"]] = r
    steps = sorted(rows)
    return {"step": steps, "omega": [rows[s]["omega"] for s in steps],
            "mu": [rows[s]["mu"] for s in steps]}


def _theory(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
    d, L, s2 = config.d, config.length, config.sigma2
    tc = config.theory
    every = max(1, tc.flow_steps // 2000)
    with stage("theory/flow H=2", f"gradient flow on L̃, {tc.flow_steps} steps", prefix=PREFIX):
        t, w, m, loss = jax.block_until_ready(theory.gradient_flow(
            jnp.array([1e-3, -1e-3]), jnp.array([1e-3, -1e-3]), lr=tc.flow_lr,
            steps=tc.flow_steps, every=every, d=d, length=L, sigma2=s2))
    flow2 = {"time": np.asarray(t), "omega": np.asarray(w), "mu": np.asarray(m),
             "loss": np.asarray(loss), "sigma2": s2}
    k4w, k4m, kh = jax.random.split(key, 3)
    with stage("theory/flow H=4", f"gradient flow on L̃, {tc.flow_steps} steps", prefix=PREFIX):
        t4, w4, m4, l4 = jax.block_until_ready(theory.gradient_flow(
            0.1 * jax.random.normal(k4w, (4,)), 0.1 * jax.random.normal(k4m, (4,)),
            lr=tc.flow_lr, steps=tc.flow_steps, every=every, d=d, length=L,
            sigma2=tc.flow_h4_sigma2))
    flow4 = {"time": np.asarray(t4), "omega": np.asarray(w4), "mu": np.asarray(m4),
             "loss": np.asarray(l4), "sigma2": tc.flow_h4_sigma2}
    gamma = np.linspace(0.005, 0.6, 200)
    xi = np.linspace(0.02, 2.0, 100)
    prop_s2 = 3.0
    prop_gd = np.array([estimators.gd_risk_proportional(x, prop_s2) for x in xi])
    prop_bayes = np.array([estimators.bayes_risk_proportional(x, prop_s2) for x in xi])
    # Approx-vs-true heatmap on the symmetric two-head family (ω, -ω), (μ, -μ).
    hw = np.linspace(0.0, 0.2, tc.heatmap_grid)
    hm = np.linspace(0.0, 6.0, tc.heatmap_grid)
    ww, mm = np.meshgrid(hw, hm)
    ww_j, mm_j = jnp.asarray(ww.ravel(), jnp.float32), jnp.asarray(mm.ravel(), jnp.float32)
    from projects.icl_regression import data as _data

    pr = _data.sample_prompts(kh, tc.heatmap_draws, L, d, s2)
    y, yq = pr.y[..., 0], pr.y_q[:, 0]
    s = jnp.einsum("bld,bd->bl", pr.x, pr.x_q)

    @jax.jit
    def true_loss(w_, m_):
        pred = m_ * (jnp.einsum("bl,bl->b", jax.nn.softmax(w_ * s, -1), y)
                     - jnp.einsum("bl,bl->b", jax.nn.softmax(-w_ * s, -1), y))
        return jnp.mean((pred - yq) ** 2)

    with stage("theory/loss grid", f"Monte-Carlo loss on {ww.size} (ω, μ) cells, "
               f"{tc.heatmap_draws} prompts each", prefix=PREFIX):
        true = np.asarray(jax.lax.map(lambda a: true_loss(a[0], a[1]), (ww_j, mm_j)))
    approx = np.asarray(theory.approx_loss(jnp.stack([ww_j, -ww_j], -1),
                                           jnp.stack([mm_j, -mm_j], -1), d, L, s2))
    hists = []
    kn = jax.random.fold_in(kh, 1)
    panels = ((f"s = 0.5, d = {d}", 0.5, [(40, d), (100, d), (500, d)]),
              ("s = 0.5, L = 8d", 0.5, [(40, 5), (200, 25), (800, 100)]),
              ("s = 0.35, L = 8d", 0.35, [(40, 5), (200, 25), (800, 100)]))
    for title, scale, sizes in bar(panels, "theory/softmax norms", unit="panel"):
        series = [{"label": f"L={n_l}, d={n_d}", "length": n_l, "d": n_d,
                   "norms": theory.softmax_norms(jax.random.fold_in(kn, 7 * n_l + n_d),
                                                 tc.norm_draws, n_l, n_d, scale)}
                  for n_l, n_d in sizes]
        hists.append({"title": title, "s": scale, "series": series})
    return {
        "softmax_norms": hists,
        "flow2": flow2, "flow4": flow4,
        "gamma": gamma, "mu_gamma": theory.mu_gamma(gamma, d, L, s2),
        "eta_gamma": 2 * gamma * theory.mu_gamma(gamma, d, L, s2),
        "manifold_loss": theory.manifold_loss(gamma, d, L, s2),
        "eta_star": estimators.eta_star(d, L, s2),
        "dgd_risk": estimators.debiased_gd_risk(estimators.eta_star(d, L, s2), d, L, s2),
        "gamma_ref": tc.gamma_ref,
        "xi": xi, "prop_sigma2": prop_s2, "prop_gd": prop_gd, "prop_bayes": prop_bayes,
        "prop_ratio": prop_gd / prop_bayes,
        "prop_bound": np.array([estimators.theorem1_ratio_bound(x, prop_s2) for x in xi]),
        "heat_w": hw, "heat_m": hm, "heat_diff": (true - approx).reshape(ww.shape),
    }


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Run the experiment into ``workdir`` (see module docstring); returns the summary."""
    lap = Laps()
    t_start, timings = lap.start, lap.timings

    buckets = spec.buckets(config)  # validates
    rd = RunDir(workdir)
    d, L, s2 = config.d, config.length, config.sigma2
    n_models = sum(len(b.seeds) for b in buckets)
    # ------------------------------------------------------------------ training
    with stage("train", f"{n_models} models, {config.steps} Adam steps in one compiled program",
               prefix=PREFIX):
        state, step = train.train(buckets, config, rd.root, rd.metrics)
    t_train = time.time() - t_start
    lap("train")
    params = {b.name: state["params"][b.name] for b in buckets}
    by_name = {b.name: b for b in buckets}
    main = [b for b in buckets if b.kind == "single"]
    heads = [b.heads for b in main]
    figures: list[tuple[str, object]] = []  # (name, thunk), drawn in the figures stage
    # ------------------------------------------------------------------ patterns
    pats, circ = {}, {}
    for b in main:
        kq, ov = (np.asarray(a) for a in model.circuits(train.unstack(state, b)[0]))
        circ[b.name] = (kq, ov)
        pats[b.name] = analysis.model_patterns(kq, ov, b.d)
        pats[b.name]["per_seed"] = [
            analysis.model_patterns(*(np.asarray(a) for a in model.circuits(p)), b.d)
            for p in train.unstack(state, b)]
    # ------------------------------------------------------------------ evaluation
    key = jax.random.key(config.eval.seed)
    lengths = sorted({int(n) for n in config.eval.lengths} | {L})
    reduced = {}
    if "H2" in pats:
        reduced["reduced_H2"] = (pats["H2"]["omega"], pats["H2"]["mu"])
    fam = [b for b in buckets if b.kind in ("single", "linear", "activation")]
    mse, se = {}, {}
    with stage("evaluate", f"{len(fam)} trained models and the estimators at {len(lengths)} "
               f"prompt lengths, {config.eval.n_test} test prompts each", prefix=PREFIX):
        res_all = evaluate.evaluate_family(
            fam, params, lambda n_len: evaluate.single_task_predictors(
                d, n_len, s2, config.theory.gamma_ref, config.theory.mu_ref, L, reduced),
            lengths=lengths, n=config.eval.n_test, sigma2=s2, key=key, backend=config.backend)
        for n_len in lengths:
            for name, r in res_all[n_len].items():
                mse.setdefault(name, {})[str(n_len)] = float(np.mean(r["mse"]))
                se.setdefault(name, {})[str(n_len)] = float(np.mean(r["se"]))
            mse.setdefault("gd_exact", {})[str(n_len)] = estimators.gd_risk(
                estimators.gd_opt_eta(d, n_len, s2), d, n_len, s2)
            mse.setdefault("debiased_gd_exact", {})[str(n_len)] = estimators.debiased_gd_risk(
                estimators.eta_star(d, n_len, s2), d, n_len, s2)
            # The official notebook's GD curves keep η = 2·0.13·3.45 at every L.
            eta_nb = 2 * config.theory.gamma_ref * config.theory.mu_ref
            mse.setdefault("gd_paper_eta_exact", {})[str(n_len)] = estimators.gd_risk(
                eta_nb, d, n_len, s2)
            mse.setdefault("debiased_gd_paper_eta_exact", {})[str(n_len)] = (
                estimators.debiased_gd_risk(eta_nb, d, n_len, s2))
            if s2 > 0:
                mse.setdefault("bayes_exact", {})[str(n_len)] = estimators.bayes_risk(
                    d, n_len, s2, seed=config.eval.seed + n_len, n=config.eval.n_test)
    lap("eval_lengths")
    # ------------------------------------------------------------------ extensions
    extra = {}
    nb = [b for b in buckets if b.kind == "noniso"]
    mb = [b for b in buckets if b.kind == "multitask"]
    ab = [b for b in buckets if b.kind == "activation"]
    ext = [w for w, on in (("non-isotropic", nb), ("two-task", mb), ("activation", ab)) if on]
    with stage("extensions", ", ".join(ext) + " models" if ext else "none enabled",
               prefix=PREFIX):
        if nb:
            b = nb[0]
            cov = b.cov_array()
            res = evaluate.evaluate_family(
                [b], params, lambda n_len: evaluate.noniso_predictors(d, n_len, s2, cov),
                lengths=[L], n=config.eval.n_test, sigma2=s2, key=jax.random.fold_in(key, 777),
                backend=config.backend)[L]
            kq, ov = (np.asarray(a) for a in model.circuits(train.unstack(state, b)[0]))
            hp = analysis.head_patterns(kq, ov, d)
            learned = analysis.preconditioner(kq, hp["omega"], d, ~hp["dummy"])
            inv = np.linalg.inv(cov)
            cos = {"inv": analysis.cosine(learned, inv),
                   "eye": analysis.cosine(learned, np.eye(d))}
            nmse = {f"trained {b.name}": res[b.name]["mse"][0],
                    **{k: res[k]["mse"] for k in ("debiased_gd", "precond_debiased_gd", "bayes")}}
            extra["noniso"] = {"bucket": b.name, "mse_L": nmse,
                               "cos_learned_vs_inv_cov": cos["inv"],
                               "cos_learned_vs_identity": cos["eye"],
                               "mu": hp["mu"].tolist(), "omega": hp["omega"].tolist(),
                               "ov_last_ratio": hp["last_ratio"].tolist()}
            labels = {f"trained {b.name}": f"trained,\nH={b.heads}",
                      **{k: v.replace(", ", ",\n") for k, v in report.NONISO_NAMES.items()}}
            figures.append(("noniso_preconditioned_gd", lambda kq=kq, ov=ov, cov=cov,
                            learned=learned, nmse=nmse, cos=cos, labels=labels, dummy=hp["dummy"]:
                            plots.noniso(kq, ov, d, cov, learned, nmse, cos, rd.figures,
                                         labels=labels, dummy=dummy)))
        if mb:
            masks = mb[0].masks_array()
            res = evaluate.evaluate_family(
                mb, params, lambda n_len: evaluate.multitask_predictors(masks, n_len, s2),
                lengths=[L], n=config.eval.n_test, sigma2=s2, key=jax.random.fold_in(key, 888),
                backend=config.backend)[L]
            mt = {}
            for b in mb:
                kq, ov = (np.asarray(a) for a in model.circuits(train.unstack(state, b)[0]))
                hp = analysis.head_patterns(kq, ov, b.d)
                mt[b.name] = {"omega_coords": hp["omega_coords"].tolist(), "mu": hp["mu"].tolist(),
                              "mse_per_task": res[b.name]["per_task"][0],
                              "dummy": hp["dummy"].tolist()}
            mt["estimators_per_task"] = {k: res[k]["per_task"] for k in ("debiased_gd",
                                                                          "ridge_subset")}
            extra["multitask"] = mt
            figures.append(("multitask_superposition", lambda mt=mt: plots.multitask(
                {k: v for k, v in mt.items() if k.startswith("mt_")},
                [list(s) for s in config.multitask.subsets], rd.figures)))
        if ab:
            acts = {}
            for b in ab:
                kq, ov = (np.asarray(a) for a in model.circuits(train.unstack(state, b)[0]))
                p = analysis.model_patterns(kq, ov, b.d)
                f = b.attention[4:]
                slope = model.ACTIVATIONS[f].slope * b.act_c
                acts[b.name] = {
                    "function": f, "c": b.act_c, "mse": mse[b.name][str(L)],
                    "omega": p["omega"], "mu": p["mu"], "dummy": p["dummy"],
                    "kq_offdiag_ratio": p["kq_offdiag_ratio"], "ov_last_ratio": p["ov_last_ratio"],
                    "ov_zero_sum_rel": p["ov_zero_sum_rel"], "sign_match": p["sign_match"],
                    "n_pos": p["n_pos"], "n_neg": p["n_neg"],
                    "eta_eff": slope * p["eta_eff"]}
            extra["activation"] = acts
            shown = {f"softmax (exp), {b.name}": {"omega": pats[b.name]["omega"],
                                                  "mu": pats[b.name]["mu"],
                                                  "mse": mse[b.name][str(L)],
                                                  "eta_eff": pats[b.name]["eta_eff"]}
                     for b in main if b.heads == ab[0].heads}
            shown.update({f"{model.ACTIVATIONS[a['function']].label}, C={a['c']:g}": a
                          for a in acts.values()})
            figures.append(("activation_ablation",
                            lambda shown=shown: plots.activations(shown, L, rd.figures)))
    lap("extensions")
    # ------------------------------------------------------------------ theory
    with stage("theory", "gradient flows on L̃, true-vs-approximate loss grid, softmax norms",
               prefix=PREFIX):
        th = _theory(config, jax.random.fold_in(key, 999))
    lap("theory")
    # ------------------------------------------------------------------ summary + claims
    sel = [str(n) for n in lengths]
    summary = {
        "length": L,
        "heads": heads,
        "mse": {k: {n: v[n] for n in sel if n in v} for k, v in mse.items()},
        "mse_se": se,
        "omega": {k: p["omega"] for k, p in pats.items()},
        "mu": {k: p["mu"] for k, p in pats.items()},
        "kq_offdiag_ratio": {k: p["kq_offdiag_ratio"] for k, p in pats.items()},
        "gamma_offdiag_ratio": {k: p["gamma_offdiag_ratio"] for k, p in pats.items()},
        "ov_zero_sum_abs": {k: p["ov_zero_sum_abs"] for k, p in pats.items()},
        "patterns": pats,
        "eta_star": estimators.eta_star(d, L, s2),
        "theory": {
            "mu_gamma_at_gamma_ref": float(theory.mu_gamma(config.theory.gamma_ref, d, L, s2)),
            "flow2_final": {"time": float(th["flow2"]["time"][-1]),
                            "omega": th["flow2"]["omega"][-1].tolist(),
                            "mu": th["flow2"]["mu"][-1].tolist(),
                            "eta_eff": float(np.sum(th["flow2"]["omega"][-1]
                                                    * th["flow2"]["mu"][-1]))},
            "flow4_final": {"omega": th["flow4"]["omega"][-1].tolist(),
                            "mu": th["flow4"]["mu"][-1].tolist()},
            "heatmap_max_abs_true_minus_approx": float(np.abs(th["heat_diff"]).max()),
            "softmax_norms": [
                {"title": p["title"], "s": p["s"],
                 "series": [{"L": ser["length"], "d": ser["d"],
                             "median_times_sqrt_L": float(np.median(ser["norms"])
                                                          * np.sqrt(ser["length"]))}
                            for ser in p["series"]]}
                for p in th["softmax_norms"]],
        },
        **extra,
        "steps": step,
        "train_seconds": round(t_train, 1),
    }
    summary["claims"] = report.claims(summary)
    # ------------------------------------------------------------------ figures
    fig = rd.figures
    curves = {k: [mse[k][str(n)] for n in lengths] for k in mse}
    figures += [
        ("mse_vs_length", lambda: plots.mse_vs_length(curves, lengths, L, heads, fig)),
        ("mse_vs_heads", lambda: plots.mse_vs_heads(
            {k: mse[k][str(L)] for k in mse}, heads,
            {k: mse[k][str(L)] for k in ("debiased_gd", "bayes", "single_head")}, L, fig)),
    ]
    for b in main:
        kq, ov = circ[b.name]
        figures.append((f"circuits_{b.name}", lambda b=b, kq=kq, ov=ov: plots.circuits(
            kq, ov, d, f"{b.name}: KQ = KᵀQ/√(d+1) and OV = O·V per head (seed {b.seeds[0]}, "
            f"step {step})", f"circuits_{b.name}", fig, dummy=pats[b.name]["dummy"])))
    figures.append(("pattern_metrics", lambda: plots.pattern_bars(
        pats, heads, fig, thresholds=report.THRESHOLDS)))
    dyn_name = "H2" if "H2" in by_name else main[-1].name
    hist = _read_history(rd.root / "metrics.jsonl", by_name[dyn_name].model_names[0])
    figures += [
        ("dynamics", lambda: plots.dynamics({dyn_name: hist}, th["flow2"], th["flow4"],
                                            config.theory.gamma_ref, PAPER["mu_pos_sum"], fig)),
        ("theory", lambda: plots.theory(th, fig)),
        ("softmax_norm_histograms", lambda: plots.softmax_norm_histograms(th["softmax_norms"],
                                                                          fig)),
    ]
    lin = [b for b in buckets if b.kind == "linear"]
    if lin:
        names = {lin[0].name: f"linear attention, H={lin[0].heads}"}
        names.update({f"H{h}": f"softmax, H={h}" for h in heads[:2]})
        figures.append(("linear_vs_softmax",
                        lambda: plots.linear_vs_softmax(curves, lengths, names, L, fig)))
    with stage("figures", f"{len(figures)} figures (PNG + PDF) into {fig}", prefix=PREFIX):
        for _, draw in bar(figures, "figures", unit="fig"):
            draw()
    lap("figures")
    # ------------------------------------------------------------------ report
    summary["timings"] = timings
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    rd.write_report(report.render(summary, config, heads))
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    return summary

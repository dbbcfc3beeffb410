"""Experiment entry: ``headlab run successor_heads [--quick]``.

Loads the model, builds the ordinal classes through its tokenizer, scores every head's
effective OV circuit (succession, copy, predecessor; every embedding mode), locates in-context
succession with per-head DLA and activation patching on list prompts, trains the mod-10 SAEs
and runs the vector-arithmetic edits; draws the figures and writes summary.json and report.md.
Each stage prints a start line and its wall time (``common.progress``); ``headlab run`` ends
with :func:`headline`.
"""

from __future__ import annotations

import pathlib
import time

import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir
from projects.successor_heads import (
    incontext,
    mod10,
    natural,
    plots,
    report,
    succession,
    tasks,
)
from projects.successor_heads.configs.default import validate
from projects.successor_heads.paper import PAPER

PREFIX = "successor_heads"


def headline(summary: dict) -> list[str]:
    """The closing lines of ``headlab run``: the scan beside the paper's bar and the pilot, the
    in-context heads, the mod-10 numbers, and the claims' verdicts."""
    top = summary["top_heads"][0]
    cp = summary["copy_top_heads"][0]
    pilot = PAPER["pilot_smollm2"]
    lines = [
        f"{summary['model']}: best succession score {top[2]:.3f} (L{top[0]}H{top[1]}"
        + (f" and {summary['n_tied_best'] - 1} more tied" if summary.get("n_tied_best", 1) > 1
           else "") + "), chance "
        f"{summary['chance']:.3f}, successor bar {summary['threshold']} -> "
        + ("a successor head" if top[2] > summary["threshold"] else "no successor head")
        + f" (pilot: {pilot['best_score']} vs chance {pilot['chance']}; paper: heads in Pythia,"
        " GPT-2, Llama-2)",
        f"  copy control: L{cp[0]}H{cp[1]} {cp[2]:.3f} (pilot L23H0 0.989)",
    ]
    ic = summary.get("in_context")
    if ic:
        d = ic["top_dla_heads"][0]
        line = (f"  in context: {ic['top1']}/{ic['prompts']} list prompts right at top-1; "
                f"largest direct effect L{d[0]}H{d[1]} {d[2]:+.2f} logits")
        if ic.get("top_patch_heads"):
            p = ic["top_patch_heads"][0]
            line += f"; patching restores most at L{p[0]}H{p[1]} ({p[2]:.2f})"
        lines.append(line)
    co = summary.get("contextual_ov")
    if co:
        t = co["top_heads"][0]
        lines.append(f"  with each head's in-context input instead of MLP0(W_E): best "
                     f"L{t[0]}H{t[1]} {t[2]:.3f} (chance {co['chance']:.3f})")
    m = summary.get("mod10")
    if m:
        lines.append(f"  mod-10 SAE features: coverage {m['coverage_mean']:.2f} (paper "
                     f"{PAPER['mod10_coverage']})")
    ar = summary.get("arithmetic")
    if ar:
        lines.append(f"  vector arithmetic: success {ar['best_rate']:.2f} at k = {ar['best_k']:g}"
                     f" (random direction {ar['control_at_best_k']:.2f}; paper 0.89 on numbers "
                     "20-29, 0.53 on months)")
    cl = summary["claims"]
    lines.append(f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold; report.md says "
                 "which")
    return lines


def _top(a: np.ndarray, k: int) -> list[list]:
    order = np.argsort(-a.ravel(), kind="stable")[:k]
    return [[int(i // a.shape[1]), int(i % a.shape[1]), round(float(a.ravel()[i]), 4)]
            for i in order]


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, loaded=None) -> dict:
    """Run the experiment into ``workdir`` (see module docstring); returns the summary.

    ``loaded``: an already loaded ``(model, tokenizer)`` used instead of ``config.model``
    (tests run the whole pipeline on a tiny model this way).
    """
    validate(config)
    lap = Laps()
    timings = lap.timings

    rd = RunDir(workdir)
    fig_dir = rd.figures
    problems: dict[str, list[str]] = {}
    # ------------------------------------------------------------------ model + classes
    from common.models import load_pretrained

    where = f" sharded over {config.mesh}" if config.mesh else ""
    with stage("load", f"model {config.model}{where}", prefix=PREFIX, enabled=loaded is None):
        model, tok = (loaded if loaded is not None
                      else load_pretrained(config.model, mesh=config.mesh or None))
    mode = succession.resolve_embed_mode(model.config, config.embed_mode,
                                         config.embed_fallback or None)
    classes, gone = tasks.build_classes(tok, config.classes, bare=config.bare,
                                        held_out=config.held_out)
    lap("load")
    # ------------------------------------------------------------------ weight-based scan
    with stage("scan", f"succession score of all {model.config.n_layers * model.config.n_heads}"
               f" heads on {len(classes)} classes ({mode}, final norm {config.final_norm})",
               prefix=PREFIX):
        t0 = time.perf_counter()
        sc = succession.score_heads(model, classes, embed_mode=mode,
                                    final_norm=config.final_norm)
        scan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sc = succession.score_heads(model, classes, embed_mode=mode,
                                    final_norm=config.final_norm)
        scan_warm_s = time.perf_counter() - t0
    modes = []
    if config.compare_modes:
        combos = [(m, f) for m in succession.EMBED_MODES for f in (True, False)
                  if succession.has_mlp0(model.config) or m == "raw_embed"]
        for m, f in bar(combos, "embed modes", unit="mode"):
            s2 = succession.score_heads(model, classes, embed_mode=m, final_norm=f)
            t1, c1 = s2.top(1)[0], s2.top(1, "copy")[0]
            modes.append({"embed_mode": m, "final_norm": f, "best_succession": t1[2],
                          "best_head": [t1[0], t1[1]], "best_copy": c1[2],
                          "best_copy_head": [c1[0], c1[1]],
                          "top3": [list(t) for t in s2.top(3)]})
    lap("scan")
    succ = np.asarray(sc.succession)
    top = sc.top(config.top_k)
    per_class = {
        name: {"chance": sc.class_chance[name],
               "best_head": _top(np.asarray(v), 1)[0],
               "pairs": int((sc.table.cls == i).sum()),
               "held_out": bool(not sc.table.pooled[i])}
        for i, (name, v) in enumerate(sc.per_class.items())}
    summary: dict = {
        "model": config.model,
        "n_layers": model.config.n_layers, "n_heads": model.config.n_heads,
        "n_kv_heads": model.config.n_kv_heads,
        "embed_mode": mode, "final_norm": bool(config.final_norm),
        "threshold": config.threshold,
        "succession_scores": np.round(succ, 4).tolist(),
        "top_heads": [[h[0], h[1], round(h[2], 4)] for h in top],
        "top_heads_per_class": [{"head": [h[0], h[1]],
                                 "per_class": {k: round(v, 4)
                                               for k, v in sc.breakdown(h[0], h[1]).items()}}
                                for h in top],
        "per_class": per_class,
        "chance": sc.chance,
        "n_pairs_pooled": int(sc.table.pooled[sc.table.cls].sum()),
        "copy_scores": np.round(np.asarray(sc.copy), 4).tolist(),
        "copy_top_heads": [[h[0], h[1], round(h[2], 4)] for h in sc.top(5, "copy")],
        "predecessor_top_heads": [[h[0], h[1], round(h[2], 4)]
                                  for h in sc.top(5, "predecessor")],
        "n_above_threshold": int((succ > config.threshold).sum()),
        "n_tied_best": int(np.isclose(succ, succ.max()).sum()),
        "mlp0_to_embed_norm_ratio": (float(np.mean(
            np.linalg.norm(np.asarray(succession.effective_embed(model, sc.table.tokens,
                                                                 "mlp0_only")), axis=-1)
            / np.linalg.norm(np.asarray(succession.effective_embed(model, sc.table.tokens,
                                                                   "raw_embed")), axis=-1)))
            if succession.has_mlp0(model.config) else None),
        "embed_modes": modes,
        "classes": tasks.describe(classes, gone),
        "scan_seconds": {"first_call": round(scan_s, 3), "warm": round(scan_warm_s, 4)},
    }
    # ------------------------------------------------------------------ in context
    ic_res = None
    if config.incontext.enabled:
        ic_classes = list(classes)
        patch_set = tuple(config.incontext.patch_classes) or None
        n_patch = len(patch_set) if patch_set else len(ic_classes)
        with stage("in-context", f"list prompts of {len(ic_classes)} classes; DLA per head and "
                   f"MLP; activation patching (every head, every MLP) on up to {n_patch} "
                   "classes", prefix=PREFIX):
            try:
                ic_res = incontext.run_in_context(
                    model, tok, ic_classes, n_items=config.incontext.n_items,
                    max_prompts=config.incontext.max_prompts, patch=config.incontext.patch,
                    patch_prompts=config.incontext.patch_prompts, patch_classes=patch_set,
                    seed=config.seed, progress=lambda xs: bar(xs, "in-context classes",
                                                              unit="class"))
            except ValueError as e:  # the model continues no list: say so, go on
                summary["in_context_skipped"] = str(e)
        if ic_res is not None:
            summary["in_context"] = incontext.summarize(ic_res, config.top_k, sc)
        with stage("in-context OV", "succession scores with each head's in-context input (v at "
                   "the item in a list prompt) instead of MLP0(W_E)", prefix=PREFIX):
            csc = succession.scores_from_logits(
                incontext.contextual_ov_logits(model, tok, sc.table, classes), sc.table)
        dla_top = summary["in_context"]["top_dla_heads"][0][:2] if ic_res is not None else None
        summary["contextual_ov"] = {
            "top_heads": [[a, b, round(v, 4)] for a, b, v in csc.top(config.top_k)],
            "copy_top_heads": [[a, b, round(v, 4)] for a, b, v in csc.top(3, "copy")],
            "chance": csc.chance,
            "top_head_per_class": {k: round(v, 4) for k, v in csc.breakdown(
                *csc.top(1)[0][:2]).items()},
            "dla_head": dla_top,
            "dla_head_score": (round(float(np.asarray(csc.succession)[tuple(dla_top)]), 4)
                               if dla_top else None)}
    lap("in_context")
    # ------------------------------------------------------------------ natural text
    if config.natural.enabled:
        ic = summary.get("in_context")
        lh = ic["top_dla_heads"][0][:2] if ic else top[0][:2]
        nc = config.natural
        with stage("natural text", f"L{lh[0]}H{lh[1]} on {nc.n_texts} AG News texts: what its "
                   "direct effect promotes", prefix=PREFIX):
            try:
                texts = natural.agnews_texts(nc.n_texts)
                summary["natural"] = natural.head_behaviour(
                    model, tok, texts, int(lh[0]), int(lh[1]), seq=nc.seq,
                    top_frac=nc.top_frac)
            except (FileNotFoundError, ValueError) as e:
                summary["natural_skipped"] = str(e)
    lap("natural")
    # ------------------------------------------------------------------ mod 10
    m10 = None
    if config.mod10.enabled:
        mc = config.mod10
        n_sae = len(mc.l1) * len(mc.seeds)
        with stage("mod10", f"{n_sae} SAEs (dictionary {mc.dict_mult:g} x d_model, "
                   f"{mc.steps} Adam steps, one population) on numeric-token embeddings",
                   prefix=PREFIX):
            m10 = mod10.mod10_features(
                model, tok, embed_mode=mode, dict_mult=mc.dict_mult, l1=mc.l1, seeds=mc.seeds,
                steps=mc.steps, lr=mc.lr, tied=mc.tied, max_number=mc.max_number,
                workdir=rd.root / "sae", metrics=rd.metrics, split_seed=config.seed)
        summary["mod10"] = m10.summary()
    lap("mod10")
    if m10 is not None and config.arithmetic.enabled:
        ac = config.arithmetic
        with stage("arithmetic", f"mod-10 edits at layer {ac.layer}, k in {list(ac.ks)}",
                   prefix=PREFIX):
            ar = mod10.vector_arithmetic(model, tok, classes, m10, ks=ac.ks,
                                         n_items=ac.n_items, layer=ac.layer, seed=config.seed)
        rates = [ar.rate(k=k) for k in ac.ks]
        ctrl = [ar.rate("control_success", k=k) for k in ac.ks]
        best = int(np.nanargmax(rates))
        cls_names = sorted({r["class"] for r in ar.rows})
        summary["arithmetic"] = {
            "n_edits": len(ar.rows), "layer": ac.layer, "ks": list(ac.ks),
            "success_by_k": rates, "control_by_k": ctrl,
            "best_k": float(ac.ks[best]), "best_rate": rates[best],
            "control_at_best_k": ctrl[best],
            "per_class_at_best_k": {c: ar.rate(k=ac.ks[best], **{"class": c})
                                    for c in cls_names},
            "grid_at_best_k": np.round(ar.grid(ac.ks[best]), 3).tolist()}
        summary["arithmetic_success"] = rates[best]
    else:
        summary["arithmetic_success"] = None
    lap("arithmetic")
    # ------------------------------------------------------------------ toy positive case
    toy_sc = None
    if config.toy.enabled:
        from projects.successor_heads import toy

        tc = config.toy
        with stage("toy", f"train a {tc.n_layers}-layer model on synthetic ordinal lists "
                   f"({tc.steps} steps) and scan its heads", prefix=PREFIX):
            tmodel, ttok, tloss = toy.train_toy(
                steps=tc.steps, lr=tc.lr, d_model=tc.d_model, n_layers=tc.n_layers,
                seed=config.seed, workdir=rd.root / "toy")
            tcls, _ = tasks.build_classes(ttok, ("numbers", "days", "months", "letters"),
                                          bare=())
            tmodes = {}
            for m in succession.EMBED_MODES:
                s_m = succession.score_heads(tmodel, tcls, embed_mode=m, final_norm=True)
                tmodes[m] = {"top_heads": [[a, b, round(v, 4)] for a, b, v in s_m.top(3)],
                             "best_copy": round(s_m.top(1, "copy")[0][2], 4)}
                if m == "raw_embed":
                    toy_sc = s_m
        best = toy_sc.top(1)[0]
        summary["toy"] = {
            "loss": tloss, "steps": tc.steps, "chance": toy_sc.chance,
            "classes": {c.name: len(c.items) for c in tcls},
            "succession_scores_raw_embed": np.round(np.asarray(toy_sc.succession), 4).tolist(),
            "best_head_raw_embed": [best[0], best[1], round(best[2], 4)],
            "best_per_class": toy_sc.breakdown(best[0], best[1]),
            "by_embed_mode": tmodes}
    lap("toy")
    summary["claims"] = report.claims(summary)
    # ------------------------------------------------------------------ figures
    figs = [("succession_heatmap", lambda: plots.score_heatmaps(
        succ, np.asarray(sc.copy), sc.chance, fig_dir, config.model, mode))]
    if toy_sc is not None:
        figs.append(("toy_succession_heatmap", lambda: plots.score_heatmaps(
            np.asarray(toy_sc.succession), np.asarray(toy_sc.copy), toy_sc.chance, fig_dir,
            "toy model on synthetic lists", "raw_embed", name="toy_succession_heatmap")))
    top5 = top[:5]
    figs.append(("per_class_top_heads", lambda: plots.per_class_bars(
        top5, {n: [float(np.asarray(sc.per_class[n])[h[0], h[1]]) for h in top5]
               for n in sc.per_class}, sc.class_chance, fig_dir)))
    if modes:
        figs.append(("embed_modes", lambda: plots.mode_comparison(
            modes, sc.chance, config.threshold, fig_dir)))
    if ic_res is not None:
        figs.append(("incontext_heads", lambda: plots.incontext_heads(
            ic_res.dla_heads, ic_res.dla_heads_shuffled, ic_res.patch_heads, fig_dir)))
        figs.append(("incontext_layers", lambda: plots.incontext_layers(
            ic_res.dla_mlp, ic_res.dla_heads, ic_res.patch_mlp, fig_dir)))
    if m10 is not None:
        figs.append(("mod10_features", lambda: plots.mod10_activations(
            m10.acts, m10.tokens.value, m10.tokens.domain, mod10.DOMAINS,
            m10.coverage[m10.best], fig_dir)))
        if "arithmetic" in summary:
            a = summary["arithmetic"]
            figs.append(("vector_arithmetic", lambda: plots.arithmetic(
                np.asarray(a["grid_at_best_k"], float), a["ks"], a["success_by_k"],
                a["control_by_k"], a["best_k"], fig_dir)))
    with stage("figures", f"{len(figs)} figures (PNG + PDF) into {fig_dir}", prefix=PREFIX):
        for name, draw in bar(figs, "figures", unit="fig"):
            problems[name] = draw()
    summary["figure_layout_problems"] = {k: v for k, v in problems.items() if v}
    lap("figures")
    # ------------------------------------------------------------------ report
    summary["timings"] = timings
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    rd.write_report(report.render(summary, config))
    return summary

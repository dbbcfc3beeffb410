"""Experiment entry: ``headlab run act_calibration [--quick]``.

Loads the model and the shipped classification sets, measures where the ACT rule finds sinks
on real prompts, searches the heads whose calibration helps (one head at a time, layer-prefix
cached), evaluates few-shot accuracy vanilla vs ACT on the searched / all / random heads over
seeds, draws the figures and writes ``summary.json``, ``heads.json`` and ``report.md``. Each
stage prints a start line and its wall time; ``headlab run`` ends with :func:`headline`.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir, write_json
from projects.act_calibration import data, plots, prompts, report, scoring, search, sinks
from projects.act_calibration.configs.default import layer_range, validate
from projects.act_calibration.evaluate import SETTINGS, evaluate, mean_std_ci
from projects.act_calibration.paper import PAPER

PREFIX = "act_calibration"


def headline(summary: dict) -> list[str]:
    """The closing lines: mean gain of ACT over vanilla beside the paper's, the sink rates."""
    g = summary["gain_points"]
    s = summary["sinks"]
    lines = [
        f"{summary['model']}: mean accuracy over {len(summary['accuracy'])} datasets: vanilla "
        f"{100 * summary['mean_accuracy']['vanilla']:.1f}%, ACT searched heads "
        f"{g['act_searched']:+.1f} points, all heads {g['act_all']:+.1f}, random heads "
        f"{g['act_random']:+.1f} (paper: up to +{PAPER['best_avg_gain_points']} on "
        f"{PAPER['best_avg_gain_model']})",
        f"  head search: {len(summary['heads'])} of {summary['search']['n_searched']} heads kept "
        f"on {summary['search']['n_examples']} calibration examples "
        f"({summary['search']['seconds']:.0f} s, layer-prefix cached)",
        f"  sinks: first token a sink in {100 * s['initial_sink_rate']:.0f}% of (head, prompt) "
        f"pairs; a hidden sink in {100 * s['hidden_sink_rate']:.0f}%",
        f"  ACT gain reproduced at this scale: {summary['verdict']}",
    ]
    return lines


def _table(acc: dict[str, dict[str, list[float]]]) -> tuple[dict, dict]:
    """``summary["accuracy"]`` (means with ``_std`` twins) and ``{dataset: {setting: (mean,
    std)}}`` for the figure."""
    out, fig = {}, {}
    for name, per in acc.items():
        out[name], fig[name] = {}, {}
        for s, vals in per.items():
            m, sd, ci = mean_std_ci(vals)
            out[name][s] = round(m, 4)
            out[name][f"{s}_std"] = round(sd, 4)
            out[name][f"{s}_ci95"] = round(ci, 4)
            out[name][f"{s}_per_seed"] = [round(v, 4) for v in vals]
            fig[name][s] = (m, sd)
    return out, fig


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, loaded=None) -> dict:
    """Run the experiment into ``workdir`` (see module docstring); returns the summary.

    ``loaded``: an already loaded ``(model, tokenizer)`` used instead of ``config.model``.
    """
    validate(config)
    lap = Laps()
    # ------------------------------------------------------------------ data (checked first)
    with stage("data", f"{len(config.datasets)} datasets from {data.data_root()}", prefix=PREFIX):
        splits = {d: data.split(d, n_demo_pool=config.n_demo_pool, n_calib=config.n_calib,
                                n_test=config.n_test, seed=config.split_seed)
                  for d in config.datasets}
    from common.models import load_pretrained

    with stage("load", f"model {config.model}", prefix=PREFIX, enabled=loaded is None):
        model, tok = (loaded if loaded is not None
                      else load_pretrained(config.model, mesh=config.mesh or None))
    cfg = model.config
    layers = layer_range(config, cfg.n_layers)
    for sp in splits.values():
        prompts.label_tokens(tok, sp.spec)  # distinct label tokens, or a clear error now
    rd = RunDir(workdir)
    lap("load")
    scorer = scoring.Scorer(model)
    # ------------------------------------------------------------------ sinks
    sink_prompts = []
    for sp in splits.values():
        demos = prompts.sample_demos(sp.demos, config.shots, config.seed)
        sink_prompts += prompts.encode_prompts(tok, sp.spec, demos,
                                               sp.test[:config.sinks.prompts_per_dataset],
                                               max_words=config.max_words)
    with stage("sinks", f"patterns of all {cfg.n_layers * cfg.n_heads} heads on "
               f"{len(sink_prompts)} few-shot prompts", prefix=PREFIX):
        st = sinks.sink_stats(model, tok, sink_prompts, threshold=config.threshold,
                              progress=lambda xs: bar(xs, "sink prompts", unit="prompt"))
    lap("sinks")
    # ------------------------------------------------------------------ head search
    searched = layers[::config.search.layer_stride]
    cal_ids, cal_labels, cal_gold = [], [], []
    for sp in splits.values():
        labels = prompts.label_tokens(tok, sp.spec)
        demos = prompts.sample_demos(sp.demos, config.search.shots, config.seed)
        cal_ids += prompts.encode_prompts(tok, sp.spec, demos, sp.calib,
                                          max_words=config.max_words)
        cal_labels += [labels] * len(sp.calib)
        cal_gold += [e.label for e in sp.calib]
    items = search.calib_items(cal_ids, cal_labels, cal_gold, batch_tokens=config.batch_tokens)
    n_cal = sum(len(it.batch.rows) for it in items)
    with stage("search", f"{len(searched)} layers x {cfg.n_heads} heads, one at a time, on "
               f"{n_cal} calibration prompts (layer-prefix cached: {config.search.cached})",
               prefix=PREFIX):
        res = search.head_search(scorer, items, searched, cached=config.search.cached,
                                 beta=config.beta, threshold=config.threshold,
                                 criterion=config.criterion, min_gain=config.search.min_gain,
                                 progress=lambda xs: bar(xs, "search batches", unit="batch"))
    heads = res.heads
    write_json(rd.root / "heads.json", {"model": config.model, "heads": [list(h) for h in heads],
                                 "beta": config.beta, "threshold": config.threshold,
                                 "criterion": config.criterion, "layers": list(layers)})
    lap("search")
    # ------------------------------------------------------------------ evaluation
    with stage("evaluate", f"{len(SETTINGS)} settings x {len(splits)} datasets x "
               f"{len(config.seeds)} seeds, {config.shots}-shot", prefix=PREFIX):
        ev = evaluate(scorer, tok, splits, heads=heads, layers=layers, shots=config.shots,
                      seeds=config.seeds, beta=config.beta, threshold=config.threshold,
                      criterion=config.criterion, max_words=config.max_words,
                      batch_tokens=config.batch_tokens,
                      progress=lambda xs: bar(xs, "seeds", unit="seed"))
    lap("evaluate")
    accuracy, fig_table = _table(ev.accuracy)
    mean_acc = {s: float(np.mean([accuracy[d][s] for d in accuracy])) for s in SETTINGS}
    gain = {s: round(100 * (mean_acc[s] - mean_acc["vanilla"]), 2) for s in SETTINGS}
    # per-seed mean over datasets: is the searched gain beyond the seed-to-seed spread?
    per_seed = {s: [float(np.mean([ev.accuracy[d][s][i] for d in ev.accuracy]))
                    for i in range(len(config.seeds))] for s in SETTINGS}
    diffs = np.asarray(per_seed["act_searched"]) - np.asarray(per_seed["vanilla"])
    m, sd, ci = mean_std_ci(diffs.tolist())
    reproduced = bool(m - ci > 0) if len(diffs) > 1 else bool(m > 0)
    verdict = (f"{'yes' if reproduced else 'no'}: searched-head gain {100 * m:+.2f} points, 95% "
               f"CI over seeds ±{100 * ci:.2f}")
    summary: dict = {
        "model": config.model,
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "accuracy": accuracy,
        "mean_accuracy": {s: round(v, 4) for s, v in mean_acc.items()},
        "gain_points": gain,
        "searched_gain_points_per_seed": [round(100 * x, 2) for x in diffs.tolist()],
        "searched_gain_ci95_points": round(100 * ci, 2),
        "reproduced": reproduced,
        "verdict": verdict,
        "heads": [list(h) for h in heads],
        "search": res.summary() | {"layers_searched": list(searched)},
        "search_accuracy": np.round(np.nan_to_num(res.accuracy, nan=-1.0), 4).tolist(),
        "sinks": st.summary(),
        "n_test": ev.n_test,
        "mean_prompt_tokens": {k: round(v, 1) for k, v in ev.prompt_tokens.items()},
        "calibration": {"beta": config.beta, "threshold": config.threshold,
                        "criterion": config.criterion, "layers": [layers[0], layers[-1]]},
        "shots": config.shots, "seeds": list(config.seeds),
    }
    # ------------------------------------------------------------------ figures
    problems = {}
    ex = st.examples[0]
    hs = np.argsort(-st.with_hidden.reshape(-1), kind="stable")[:3]  # most hidden sinks
    show = [(int(i // cfg.n_heads), int(i % cfg.n_heads)) for i in hs]
    figs = [
        ("attention_maps", lambda: plots.attention_maps(ex, show, rd.figures)),
        ("sink_frequency", lambda: plots.sink_frequency(
            st.summary()["initial_sink_rate_by_layer"],
            st.summary()["hidden_sink_rate_by_layer"], rd.figures)),
        ("accuracy", lambda: plots.accuracy_bars(fig_table, SETTINGS, rd.figures,
                                                 PAPER["best_avg_gain_points"])),
        ("head_search", lambda: plots.search_gains(res.accuracy - res.baseline, heads,
                                                   rd.figures)),
    ]
    with stage("figures", f"{len(figs)} figures (PNG + PDF) into {rd.figures}", prefix=PREFIX):
        for name, draw in figs:
            problems[name] = draw()
    summary["figure_layout_problems"] = {k: v for k, v in problems.items() if v}
    summary["attention_map_heads"] = [list(h) for h in show]
    lap("figures")
    summary["timings"] = lap.timings
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    rd.write_report(report.render(summary, config))
    json.dumps(summary)  # fail here, not in a reader, if something is not JSON
    return summary

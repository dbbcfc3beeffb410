"""Experiment entry: ``headlab run oat [--quick] [--config :amazon,data_dir=...]``.

Stages (each prints its start and wall time through :mod:`common.progress`): data (generate the
synthetic search trials or prepare/read the real data through the TFDS builders), PE (learn the
Gaussian-similarity table), train (the shared loop; checkpoints; a killed run resumes), decode
(greedy and sampled scanpaths on the test trials), baselines, score, figures, report. Ends with
:func:`headline`.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir
from projects.oat import baselines as B
from projects.oat import data as D
from projects.oat import evaluate, pe, plots, report, synthetic
from projects.oat import train as T
from projects.oat.model import OATConfig, count_params, to_scanpaths

PREFIX = "oat"
METHODS = ("oat", "oat_greedy", *B.NAMES)


def headline(summary: dict) -> list[str]:
    """The closing lines of ``headlab run``: OAT vs the best baseline on Δ and SS, the PE error,
    the claims' verdicts."""
    m = {k: {"behavioural_error": float(v["behavioural_error"]),  # "inf" in summary.json
             "sequence_score": float(v["sequence_score"])} for k, v in summary["metrics"].items()}
    base = [k for k in B.NAMES if k in m]
    bd = min(base, key=lambda k: m[k]["behavioural_error"])
    bs = max(base, key=lambda k: m[k]["sequence_score"])
    cl = report.claims(summary)
    lines = [
        f"{summary['dataset']} test set ({summary['n_test']} trials, {summary['samples']} samples "
        f"each): behavioural Δ OAT {m['oat']['behavioural_error']:.3f} (greedy "
        f"{m['oat_greedy']['behavioural_error']:.3f}) vs best baseline {bd} "
        f"{m[bd]['behavioural_error']:.3f}",
        f"  sequence score OAT {m['oat']['sequence_score']:.3f} (greedy "
        f"{m['oat_greedy']['sequence_score']:.3f}) vs best baseline {bs} "
        f"{m[bs]['sequence_score']:.3f}; the paper's table is not available to us",
        f"  PE cosine vs exp(-Δ²/2σ²): RMS error {summary['pe']['rms']:.1e}, max "
        f"{summary['pe']['max_abs']:.1e}",
        report.verdict_line(cl) + ("; failing:" if any(not c["holds"] for c in cl) else "."),
    ]
    lines += [f"  {c['claim']}: {c['detail']}" for c in cl if not c["holds"]][:4]
    return lines


def load_data(config: ml_collections.ConfigDict) -> tuple[dict[str, list[dict]], D.Geometry]:
    """``({"train", "validation", "test": [trial, ...]}, geometry)``."""
    if config.dataset == "synthetic":
        s = config.synthetic
        disp = synthetic.Display(s.rows, s.cols, s.crop_h, s.crop_w, s.n_colours, s.n_shapes,
                                 s.cell_h, s.cell_w)
        sm = synthetic.SearchModel(s.w_sim, s.w_dist, s.w_ior, s.temperature, s.p_refix,
                                   s.p_detect, s.p_verify, s.max_len)
        trials = [dict(synthetic.make_trial(s.seed, i, disp, sm), uid=i)
                  for i in bar(range(s.n_trials), "data/synthetic", unit="trial")]
        idx = D.split(len(trials), seed=s.seed)
        splits = {k: [trials[i] for i in v] for k, v in idx.items()}
        geom = D.Geometry(s.rows, s.cols, disp.centres(), disp.screen)
        return splits, geom
    from projects.oat import tfds_data

    return tfds_data.load_splits(config.dataset, config.data_dir, config.tfds_dir or None)


def model_config(config: ml_collections.ConfigDict, geom: D.Geometry, crop_hw) -> OATConfig:
    m = config.model
    return OATConfig(rows=geom.rows, cols=geom.cols, crop_h=crop_hw[0], crop_w=crop_hw[1],
                     channels=tuple(m.channels), kernels=tuple(m.kernels), pools=tuple(m.pools),
                     d_app=m.d_app, d_pe=m.d_pe, heads=m.heads, d_ff=m.d_ff,
                     enc_layers=m.enc_layers, dec_layers=m.dec_layers,
                     pointer_heads=m.pointer_heads, dropout=m.dropout, pe_rows=config.pe.rows,
                     pe_sigma=config.pe.sigma)


def _meta(config: ml_collections.ConfigDict) -> dict:
    """What a checkpoint must agree on to be resumed: everything but the evaluation."""
    d = config.to_dict()
    d.pop("eval", None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("steps", "select")}
    return json.loads(json.dumps(d, default=list))


def teacher_forced_sim(model, arrays: dict, batch: int = 64) -> float:
    """Mean probability of the true next object over the human fixation steps (EOS excluded)."""
    fn = jax.jit(lambda c, t, d: jax.nn.softmax(model(c, t, d), axis=-1))
    got = []
    for i in range(0, len(arrays["target"]), batch):
        sl = slice(i, i + batch)
        p = np.asarray(fn(arrays["crops"][sl], arrays["target"][sl], arrays["dec_in"][sl]))
        out = arrays["dec_out"][sl]
        for pi, oi in zip(p, out, strict=True):
            steps = np.flatnonzero(oi < model.cfg.n)
            got.append(float(np.mean(pi[steps, oi[steps]])))
    return float(np.mean(got))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Run the experiment into ``workdir`` (module docstring); returns the summary."""
    lap = Laps()
    timings = lap.timings

    rd = RunDir(workdir)
    # ------------------------------------------------------------------ data
    with stage("data", f"{config.dataset} trials", prefix=PREFIX):
        splits, geom = load_data(config)
    train_t, val_t, test_t = splits["train"], splits["validation"], splits["test"]
    crop_hw = np.asarray(train_t[0]["crops"]).shape[1:3]
    max_len = max(len(t["scanpath"]) for t in train_t)
    arrays = D.to_arrays(train_t, geom.n, max_len, name="train trial")
    val = D.to_arrays(val_t, geom.n, max_len, name="validation trial")
    test = D.to_arrays(test_t, geom.n, max_len, name="test trial")
    cfg = model_config(config, geom, crop_hw)
    cfg.validate()
    lap("data")
    # ------------------------------------------------------------------ PE
    width = pe.part_width(cfg.d_pe)
    with stage("pe", f"learn the {cfg.pe_rows} x {width} table to exp(-d²/2σ²), σ = "
               f"{config.pe.sigma}, {config.pe.steps} Adam steps", prefix=PREFIX):
        table = pe.learn_table(cfg.pe_rows, width, sigma=config.pe.sigma, steps=config.pe.steps,
                               lr=config.pe.lr, seed=config.pe.seed)
    pe_err = pe.table_error(table, config.pe.sigma)
    lap("pe")
    # ------------------------------------------------------------------ train
    tc = config.train
    with stage("train", f"{tc.steps} steps, batch {tc.batch}, {len(train_t)} training trials, "
               f"model d_model {cfg.d_model}, {cfg.enc_layers}+{cfg.dec_layers} layers",
               prefix=PREFIX):
        trained = T.train(cfg, table, arrays, val, [t["scanpath"] for t in val_t],
                          max_len=max_len, steps=tc.steps, batch=tc.batch, lr=tc.lr,
                          clip=tc.clip, seed=tc.seed, log_every=tc.log_every,
                          ckpt_every=tc.ckpt_every, eval_every=tc.eval_every, workdir=rd.root,
                          meta=_meta(config), metrics=rd.metrics)
    if tc.select not in ("last", "best"):
        raise ValueError(f"train.select must be 'last' or 'best', got {tc.select!r}")
    model = trained.last if tc.select == "last" else trained.best
    lap("train")
    # ------------------------------------------------------------------ decode
    n_test, S = len(test_t), int(config.eval.samples)
    dec = T.Decoder(max_len)
    with stage("decode", f"greedy and {S} sampled scanpaths for {n_test} test trials",
               prefix=PREFIX):
        greedy = to_scanpaths(dec(model, test["crops"], test["target"]), cfg.eos)
        rep_c = np.repeat(test["crops"], S, axis=0)
        rep_t = np.repeat(test["target"], S, axis=0)
        toks = dec(model, rep_c, rep_t, key=jax.random.key(config.eval.seed))
        sampled = to_scanpaths(toks, cfg.eos)
        oat_samples = [sampled[i * S:(i + 1) * S] for i in range(n_test)]
        sim_oat = teacher_forced_sim(model, {k: jnp.asarray(v) for k, v in test.items()})
    lap("decode")
    # ------------------------------------------------------------------ baselines
    rng = np.random.default_rng(config.eval.seed)
    lengths = np.array([len(t["scanpath"]) for t in train_t])
    s2 = B.centre_scale([t["scanpath"] for t in train_t], geom.rows, geom.cols)
    base_samples, base_sim = {}, {}
    with stage("baselines", f"{', '.join(B.NAMES)}: {S} scanpaths per test trial",
               prefix=PREFIX):
        for name in B.NAMES:
            maps = [B.fixation_map(name, t["crops"], int(t["target"]), geom.rows, geom.cols, s2)
                    for t in test_t]
            base_samples[name] = [B.sample_scanpaths(m, int(t["target"]), lengths, S, rng)
                                  for m, t in zip(maps, test_t, strict=True)]
            base_sim[name] = float(np.mean([np.mean(m[np.asarray(t["scanpath"])])
                                            for m, t in zip(maps, test_t, strict=True)]))
    lap("baselines")
    # ------------------------------------------------------------------ score
    human = [np.asarray(t["scanpath"]) for t in test_t]
    human_xy = [np.asarray(t["fix_xy"]) for t in test_t]
    targets = [int(t["target"]) for t in test_t]
    methods = {"oat": (oat_samples, sim_oat), "oat_greedy": ([[g] for g in greedy], sim_oat),
               **{k: (base_samples[k], base_sim[k]) for k in B.NAMES}}
    scores = {}
    for name, (samp, sim) in bar(methods.items(), "score", unit="method"):
        scores[name] = evaluate.score(samp, human, human_xy, targets, geom, sim=sim,
                                      mm_samples=config.eval.mm_samples)
    lap("score")
    hist = _history(rd.root / "metrics.jsonl")
    summary = {
        "dataset": config.dataset,
        "metrics": scores,
        "human_stats": evaluate.human_stats(human, targets),
        "pe": {**pe_err, "rows": cfg.pe_rows, "width": width, "sigma": config.pe.sigma},
        "model": {"d_model": cfg.d_model, "params": count_params(model),
                  "layers": [cfg.enc_layers, cfg.dec_layers], "heads": cfg.heads},
        "best": trained.best_info,
        "select": tc.select,
        "steps": int(tc.steps),
        "n_train": len(train_t), "n_val": len(val_t), "n_test": n_test,
        "samples": S, "max_len": max_len,
        "grid": [geom.rows, geom.cols],
        "train_mean_step_s": trained.loop.get("mean_step_s"),
        "final_loss": trained.loop.get("final_loss"),
    }
    summary["claims"] = report.claims(summary)
    # ------------------------------------------------------------------ figures
    fig = rd.figures
    k = min(int(config.eval.figure_trials), n_test)
    draws = [
        ("scanpaths", lambda: plots.scanpaths(
            [test_t[i] for i in range(k)], [greedy[i] for i in range(k)],
            [oat_samples[i][0] for i in range(k)], geom, fig)),
        ("metrics", lambda: plots.metric_bars(scores, fig)),
        ("behaviour", lambda: plots.behaviour(scores, summary["human_stats"], fig)),
        ("positional_encoding", lambda: plots.positional_encoding(table, config.pe.sigma, cfg,
                                                                  fig)),
        ("training", lambda: plots.training(hist, fig)),
    ]
    with stage("figures", f"{len(draws)} figures (PNG + PDF) into {fig}", prefix=PREFIX):
        for _, draw in bar(draws, "figures", unit="fig"):
            draw()
    lap("figures")
    summary["timings"] = timings
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    rd.write_report(report.render(summary, config))
    return summary


def _history(path: pathlib.Path) -> dict[str, list]:
    """Training loss and validation Δ per logged step from metrics.jsonl (last write wins)."""
    loss, delta = {}, {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "loss" in r:
                loss[r["step"]] = r["loss"]
            if "eval/val_delta" in r:
                delta[r["step"]] = r["eval/val_delta"]
    return {"loss_step": sorted(loss), "loss": [loss[s] for s in sorted(loss)],
            "delta_step": sorted(delta), "delta": [delta[s] for s in sorted(delta)]}

"""Experiment entry: ``headlab run pine [--quick]``.

Loads SmolLM2, runs the judge evaluation (accuracy with the correct answer first and second,
flip rate), the synthetic lost-in-the-middle retrieval (accuracy by gold position for each k)
and the timing of every method, for vanilla, NIA, PCW, PINE, PINE without re-assignment and
PINE reversed; draws the figures and writes summary.json and report.md. Each stage prints a
start line and its wall time; ``headlab run`` ends with :func:`headline`.
"""

from __future__ import annotations

import os
import pathlib
import time

import ml_collections

from common.progress import Laps, stage
from common.rundir import RunDir
from projects.pine import evals, plots, report
from projects.pine.configs.default import validate
from projects.pine.forward import check_model

PREFIX = "pine"


def headline(summary: dict) -> list[str]:
    """The closing lines: flip rates, retrieval flatness, time ratios, claims."""
    j = summary["judge"]
    lines = [f"judge ({summary['judge_items']} pairs): flip rate PINE "
             f"{j['pine']['flip_rate']:.2f} (paper: invariant by construction), vanilla "
             f"{j['vanilla']['flip_rate']:.2f}; accuracy gold first/second PINE "
             f"{j['pine']['acc_gold_first']:.2f}/{j['pine']['acc_gold_second']:.2f}, vanilla "
             f"{j['vanilla']['acc_gold_first']:.2f}/{j['vanilla']['acc_gold_second']:.2f}"]
    for key, res in summary["retrieval"].items():
        v, p = res["vanilla"], res["pine"]
        lines.append(f"retrieval {key}: vanilla by position {[round(a, 2) for a in v]}, PINE "
                     f"{[round(a, 2) for a in p]}")
    ratios = ", ".join(f"{k} {r:.2f}x" for k, r in summary["time_ratio"].items())
    lines.append(f"PINE time over the plain forward: {ratios} (targets k2 <= 1.5x, k10 <= 4x; "
                 f"paper ~2x at k=2, ~8x at k=20; load average {summary['load_average']:.1f})")
    mem = ", ".join(f"{k} {summary['memory'][k]['pine'] / 2**20:.0f} vs "
                    f"{summary['memory'][k]['plain'] / 2**20:.0f} MiB (temporaries "
                    f"{summary['temp_ratio'][k]:.1f}x)" for k in summary["memory"])
    lines.append(f"compiled-program memory, PINE vs plain: {mem}")
    cl = summary["claims"]
    lines.append(f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold; report.md says which")
    return lines


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, loaded=None) -> dict:
    """Run the experiment into ``workdir`` (see module docstring); returns the summary.

    ``loaded``: an already loaded ``(model, tokenizer)`` used instead of ``config.model``.
    """
    validate(config)
    t_start = time.perf_counter()
    lap = Laps()
    rd = RunDir(workdir)
    from common.models import load_pretrained

    with stage("load", f"model {config.model}", prefix=PREFIX, enabled=loaded is None):
        model, tok = (loaded if loaded is not None
                      else load_pretrained(config.model, mesh=config.mesh or None))
    check_model(model)
    lap("load")
    methods = tuple(config.methods)
    with stage("judge", f"{config.judge.n_items} pairs x 2 orders x {len(methods)} methods",
               prefix=PREFIX):
        judge = evals.judge(model, tok, config.judge.n_items, methods,
                            batch=config.judge.batch, seed=config.seed)
    lap("judge")
    with stage("retrieval", f"k in {tuple(config.retrieval.ks)}, {config.retrieval.n_items} "
               f"items x every gold position x {len(methods)} methods", prefix=PREFIX):
        retrieval = evals.retrieval(model, tok, tuple(config.retrieval.ks),
                                    config.retrieval.n_items, methods,
                                    batch=config.retrieval.batch, seed=config.seed)
    lap("retrieval")
    with stage("timing", f"k in {tuple(config.timing.ks)}, ~{config.timing.tokens} tokens, "
               f"{config.timing.rounds} rounds", prefix=PREFIX):
        timing, memory = evals.timing(model, tuple(config.timing.ks), config.timing.tokens,
                                      config.timing.rounds, methods)
    lap("timing")
    with stage("figures", prefix=PREFIX):
        name = config.model if loaded is None else "test model"
        problems = plots.retrieval_figure(retrieval, rd.figures, name)
        problems += plots.timing_figure(timing, memory, rd.figures, name)
    lap("figures")
    figures = sorted(p.name for p in rd.figures.glob("*.png"))
    summary = {
        "model": config.model,
        "methods": list(methods),
        "judge": judge,
        "judge_items": config.judge.n_items,
        "retrieval": retrieval,
        "retrieval_items": config.retrieval.n_items,
        "timing": timing,
        "time_ratio": {key: row["pine"] / row["plain"] for key, row in timing.items()},
        # bytes of each compiled program: temporaries + arguments (weights, ids, the
        # intervention's arrays) + outputs; memory_detail splits them
        "memory": {key: {m: v["total"] for m, v in row.items()} for key, row in memory.items()},
        "memory_detail": memory,
        "temp_ratio": {key: row["pine"]["temp"] / row["plain"]["temp"]
                       for key, row in memory.items()},
        "figure_problems": problems,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "timings": lap.timings,
        "wall_s": time.perf_counter() - t_start,
    }
    summary["claims"] = report.claims(summary)
    rd.write_config(config.to_dict())
    rd.write_summary(summary)
    rd.write_report(report.render(summary, figures))
    return summary

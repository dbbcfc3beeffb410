"""Experiment entry: ``headlab run soft_injection [--quick]``.

Stages (each prints its start and wall time): load the tasks (checked and split before anything is
written) and the model; task embeddings (per seed and task, the mean ``z`` at the last token of
``n_prompts`` prompts of ``n_shots`` demonstrations, one jitted batched forward per batch); learn
the soft head selections of every (task, seed) together on the shared training loop; evaluate on
the test splits (zero-shot, k-shot ICL, soft injection and the training-free baselines,
first-token accuracy); cross-task transfer; time and memory of soft injection against 10-shot
ICL; figures, ``summary.json`` and ``report.md``. ``headlab run`` ends with :func:`headline`.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir
from projects.soft_injection import episodes, evaluate, plots, report, selection
from projects.soft_injection.configs.default import load_tasks, validate
from projects.soft_injection.paper import PAPER

PREFIX = "soft_injection"
BASELINES = ("uniform_mix", "mean_replace_topk", "si_binarised")


def settings(config) -> list[str]:
    """The evaluated settings, in table order."""
    return (["zero_shot"] + [f"icl_{k}" for k in config.shots] + ["soft_injection"]
            + list(BASELINES))


def headline(summary: dict) -> list[str]:
    """The closing lines: mean accuracies beside the paper's gain, the cost saving, verdicts."""
    m = summary["mean"]
    lo, hi = PAPER["gain_over_icl10_points"]
    icl = max((k for k in m if k.startswith("icl_")), key=lambda k: int(k[4:]))
    gain = 100 * (m["soft_injection"] - m[icl])
    lines = [
        f"{summary['model']} on {len(summary['tasks'])} tasks x {len(summary['seeds'])} seed(s), "
        "first-token accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()),
        f"  soft injection - {icl}: {gain:+.1f} points (paper: +{lo} to +{hi} points, exact "
        "match, 12 LLMs of 4B-70B)",
    ]
    mt = summary.get("memory_and_time")
    if mt:
        lines.append(f"  prompt {mt['tokens_' + icl]:.0f} -> {mt['tokens_zero_shot']:.0f} tokens; "
                     f"inference {mt['speedup_vs_' + icl]:.1f}x faster, KV cache "
                     f"{mt['kv_bytes_' + icl] / 2**20:.1f} -> "
                     f"{mt['kv_bytes_soft_injection'] / 2**20:.2f} MiB per prompt")
    cl = summary["claims"]
    lines.append(f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold; report.md says which")
    return lines


def _zero_shot_mean_z(model, tok, task, n, rng, max_tokens):
    from common.interp.task_embedding import task_embedding

    qs = [task.train[i] for i in rng.integers(0, len(task.train), n)]
    p = episodes.build(tok, qs, task.train, 0, rng, max_tokens=max_tokens)
    return np.asarray(task_embedding(model, p.tokens, batch_size=8))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, loaded=None) -> dict:
    """Run the experiment into ``workdir`` (module docstring); returns the summary.

    ``loaded``: an already loaded ``(model, tokenizer)`` used instead of ``config.model``.
    """
    validate(config, check_tasks=False)
    lap = Laps()
    tasks = load_tasks(config)  # read and checked before anything is written
    rd = RunDir(workdir)
    from common.models import load_pretrained

    with stage("load", f"model {config.model}", prefix=PREFIX, enabled=loaded is None):
        model, tok = (loaded if loaded is not None
                      else load_pretrained(config.model, mesh=config.mesh or None))
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    lap("load")
    seeds = list(config.seeds)
    mt = config.max_prompt_tokens
    # ---- task embeddings ----------------------------------------------------------------------
    from common.interp.task_embedding import task_embedding

    emb: dict[tuple[str, int], np.ndarray] = {}
    z0: dict[tuple[str, int], np.ndarray] = {}
    emb_info: dict[str, dict] = {}
    with stage("embed", f"task embeddings: {len(tasks)} tasks x {len(seeds)} seeds, "
               f"{config.n_prompts} prompts of {config.n_shots} shots", prefix=PREFIX):
        for t in bar(tasks, "task embeddings", unit="task"):
            for s in seeds:
                rng = np.random.default_rng([s, 1])
                ep = episodes.embedding_prompts(tok, t.train, config.n_prompts, config.n_shots,
                                                rng, max_tokens=mt)
                emb[t.name, s] = np.asarray(task_embedding(model, ep.tokens,
                                                           batch_size=config.batch_size // 2))
                z0[t.name, s] = _zero_shot_mean_z(model, tok, t, config.n_prompts, rng, mt)
                emb_info.setdefault(t.name, {"mean_tokens": ep.mean_length, "n_cut": ep.n_cut})
    lap("embed")
    # ---- soft head selection --------------------------------------------------------------------
    zs_train, zs_valid = {}, {}
    for t in tasks:
        pool = list(t.train)[:config.max_train_items]
        rng = np.random.default_rng([config.split_seed, 2])
        zs_train[t.name] = episodes.build(tok, pool, t.train, 0, rng, max_tokens=mt)
        zs_valid[t.name] = episodes.build(tok, list(t.valid)[:config.val_items], t.train, 0, rng,
                                          max_tokens=mt)
    problems = [selection.Problem(f"{t.name}/seed{s}", emb[t.name, s], zs_train[t.name],
                                  zs_valid[t.name], s) for t in tasks for s in seeds]
    with stage("train", f"soft head selection of {len(problems)} (task, seed) pairs together: "
               f"{config.steps} Adam steps (lr {config.lr}), validation every "
               f"{config.val_every}", prefix=PREFIX):
        sel = selection.learn_selection(
            model, problems, steps=config.steps, lr=config.lr, val_every=config.val_every,
            keep_best=config.keep_best, group_by_length=config.group_by_length,
            workdir=rd.root, metrics=rd.metrics, mesh=config.mesh or None)
    alpha = {(t.name, s): sel.alpha[i * len(seeds) + j] for i, t in enumerate(tasks)
             for j, s in enumerate(seeds)}
    np.savez_compressed(rd.root / "alphas.npz", **{
        f"{t}/seed{s}": a for (t, s), a in alpha.items()},
        **{f"embedding/{t}/seed{s}": v for (t, s), v in emb.items()})
    lap("train")
    # ---- evaluation ---------------------------------------------------------------------------
    names_set = settings(config)
    acc = {t.name: {k: [] for k in names_set} for t in tasks}
    test_sets: dict[str, episodes.Prompts] = {}
    n_cut_icl = 0
    bs = config.batch_size
    with stage("evaluate", f"{len(names_set)} settings on up to {config.test_items or 'all'} test "
               "items per task", prefix=PREFIX):
        for t in bar(tasks, "evaluate", unit="task"):
            test = list(t.test)[:config.test_items or None]
            rng = np.random.default_rng([config.split_seed, 3])
            zs = episodes.build(tok, test, t.train, 0, rng, max_tokens=mt)
            test_sets[t.name] = zs
            clean0 = evaluate.accuracy(model, zs, batch_size=bs)
            for s in seeds:
                rng = np.random.default_rng([s, 4])
                acc[t.name]["zero_shot"].append(clean0)
                for k in config.shots:
                    pk = episodes.build(tok, test, t.train, k, rng, max_tokens=mt)
                    n_cut_icl += pk.n_cut
                    acc[t.name][f"icl_{k}"].append(evaluate.accuracy(model, pk, batch_size=bs))
                a, v = alpha[t.name, s], emb[t.name, s]
                acc[t.name]["soft_injection"].append(
                    evaluate.accuracy(model, zs, alpha=a, v=v, batch_size=bs))
                acc[t.name]["uniform_mix"].append(evaluate.accuracy(
                    model, zs, alpha=np.full((L, H), 0.5, np.float32), v=v, batch_size=bs))
                acc[t.name]["mean_replace_topk"].append(evaluate.accuracy(
                    model, zs, alpha=top_k_selection(v, z0[t.name, s], config.baseline_top_k),
                    v=v, batch_size=bs))
                acc[t.name]["si_binarised"].append(evaluate.accuracy(
                    model, zs, alpha=(a > 0.5).astype(np.float32), v=v, batch_size=bs))
    lap("evaluate")
    # ---- cross-task transfer (seed 0): alpha of task A, embedding of task B ----------------------
    transfer = None
    if config.transfer and len(tasks) > 1:
        s0 = seeds[0]
        with stage("transfer", f"alpha of each task with the embedding of every other "
                   f"({len(tasks)}x{len(tasks)}, {config.transfer_items} items)", prefix=PREFIX):
            transfer = np.zeros((len(tasks), len(tasks)))
            for i, ta in enumerate(bar(tasks, "transfer", unit="task")):
                for j, tb in enumerate(tasks):
                    zs = test_sets[tb.name]
                    sub = episodes.Prompts(zs.tokens[:config.transfer_items],
                                           zs.target[:config.transfer_items],
                                           zs.shots[:config.transfer_items])
                    transfer[i, j] = evaluate.accuracy(model, sub, alpha=alpha[ta.name, s0],
                                                       v=emb[tb.name, s0], batch_size=bs)
    lap("transfer")
    # ---- cost: soft injection vs 10-shot ICL on the first task ---------------------------------
    with stage("cost", "inference time and prompt memory, soft injection vs the longest ICL",
               prefix=PREFIX):
        kmax = max(config.shots)
        t = tasks[0]
        test = list(t.test)[:min(len(t.test), 4 * bs)]
        rng = np.random.default_rng(0)
        p0 = episodes.build(tok, test, t.train, 0, rng, max_tokens=mt)
        pk = episodes.build(tok, test, t.train, kmax, rng, max_tokens=mt)
        a, v = alpha[t.name, seeds[0]], emb[t.name, seeds[0]]
        _, sec_si = evaluate.timed_accuracy(model, p0, alpha=a, v=v, batch_size=bs)
        _, sec_0 = evaluate.timed_accuracy(model, p0, batch_size=bs)
        _, sec_k = evaluate.timed_accuracy(model, pk, batch_size=bs)
        tok_all = float(np.mean([test_sets[x.name].mean_length for x in tasks]))
        cost = {
            "task": t.name, "items": len(test), "batch_size": bs,
            f"seconds_per_prompt_icl_{kmax}": sec_k, "seconds_per_prompt_zero_shot": sec_0,
            "seconds_per_prompt_soft_injection": sec_si,
            f"speedup_vs_icl_{kmax}": sec_k / sec_si,
            "tokens_zero_shot": p0.mean_length, f"tokens_icl_{kmax}": pk.mean_length,
            "tokens_zero_shot_all_tasks": tok_all,
            "kv_bytes_soft_injection": evaluate.kv_cache_bytes(cfg, p0.mean_length),
            f"kv_bytes_icl_{kmax}": evaluate.kv_cache_bytes(cfg, pk.mean_length),
            "task_embedding_bytes": 4 * L * H * cfg.d_head + 4 * L * H,
            "train_seconds_per_step": sel.seconds_per_step,
            "train_problems": len(problems),
        }
    lap("cost")
    # ---- summary ------------------------------------------------------------------------------
    per_task = {}
    for t in tasks:
        row = {k: float(np.mean(v)) for k, v in acc[t.name].items()}
        row.update({f"{k}_std": float(np.std(v)) for k, v in acc[t.name].items() if len(v) > 1})
        a = np.stack([alpha[t.name, s] for s in seeds])
        row["alpha_near_0"] = float(np.mean(a < 0.1))
        row["alpha_near_1"] = float(np.mean(a > 0.9))
        row["n_test"] = len(test_sets[t.name])
        row["embedding_prompt_tokens"] = emb_info[t.name]["mean_tokens"]
        row["best_step"] = [int(sel.best_step[i * len(seeds) + j]) for j in range(len(seeds))
                            for i in [tasks.index(t)]]
        per_task[t.name] = row
    mean = {k: float(np.mean([per_task[t.name][k] for t in tasks])) for k in names_set}
    seed_means = {k: [float(np.mean([acc[t.name][k][j] for t in tasks])) for j in range(len(seeds))]
                  for k in names_set}
    summary: dict = {
        "model": config.model, "n_layers": L, "n_heads": H, "seeds": seeds,
        "settings": names_set,
        "tasks": per_task, "mean": mean, "mean_per_seed": seed_means,
        "memory_and_time": cost,
        "alpha_mean_over_tasks": np.round(np.mean(np.stack(list(alpha.values())), 0), 4).tolist(),
        "alpha_near_binary": float(np.mean([per_task[t.name]["alpha_near_0"]
                                            + per_task[t.name]["alpha_near_1"] for t in tasks])),
        "val_loss": {"steps": [0] + sel.val_steps,
                     "mean": np.round([sel.initial_val_loss.mean(), *sel.val_loss.mean(1)],
                                      4).tolist()},
        "keep_best": bool(config.keep_best),
        "final_equals_kept": float(np.mean(np.all(np.isclose(sel.alpha, sel.alpha_final),
                                                  axis=(1, 2)))),
        "icl_prompts_cut": n_cut_icl,
        "embedding_prompts_cut": {k: v["n_cut"] for k, v in emb_info.items() if v["n_cut"]},
    }
    names_t = [t.name for t in tasks]
    flat = np.stack([np.mean([alpha[n, s] for s in seeds], 0).ravel() for n in names_t])
    sim = _cosine(flat - flat.mean(1, keepdims=True))
    summary["selection_similarity"] = {"tasks": names_t, "matrix": np.round(sim, 3).tolist()}
    if transfer is not None:
        summary["transfer"] = {"tasks": names_t, "accuracy": np.round(transfer, 3).tolist(),
                               "seed": seeds[0], "items": config.transfer_items}
    summary["claims"] = report.claims(summary)
    # ---- figures ------------------------------------------------------------------------------
    with stage("figures", "selection heatmaps, similarity, transfer, accuracies", prefix=PREFIX):
        figs = {"alpha_heatmaps": plots.alpha_heatmaps(
                    {n: np.mean([alpha[n, s] for s in seeds], 0) for n in names_t},
                    rd.figures / "alpha_heatmaps"),
                "accuracy": plots.accuracy_bars(summary, rd.figures / "accuracy"),
                "similarity": plots.similarity(sim, names_t, rd.figures / "selection_similarity",
                                               transfer=transfer),
                "training": plots.training_curves(sel, [p.name for p in problems],
                                                  rd.figures / "training")}
        summary["figures"] = {k: str(pathlib.Path(v[0]).relative_to(rd.root))
                              for k, v in figs.items()}
        summary["figure_problems"] = {k: v[1] for k, v in figs.items() if v[1]}
    lap("figures")
    summary["timings"] = lap.timings
    summary["total_seconds"] = lap.total()
    rd.write_summary(summary)
    rd.write_report(report.render(summary, config))
    return summary


def top_k_selection(v: np.ndarray, z0: np.ndarray, k: int) -> np.ndarray:
    """The training-free baseline's weights ``[L, H]``: 1 at the ``k`` heads whose few-shot mean
    ``z`` (the task embedding) moves furthest from their zero-shot mean, 0 elsewhere."""
    d = np.linalg.norm(np.asarray(v) - np.asarray(z0), axis=-1)
    a = np.zeros(d.shape, np.float32)
    a.flat[np.argsort(-d.ravel(), kind="stable")[:k]] = 1.0
    return a


def _cosine(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n = np.where(n == 0, 1.0, n)
    y = x / n
    return y @ y.T


"""Experiment entry: ``headlab run soft_injection [--quick]``.

Stages (each prints its start and wall time): load the tasks (checked and split before anything is
written) and the model; task embeddings (per seed and task, the mean ``z`` and residual at the
last token of ``n_prompts`` prompts of ``n_shots`` demonstrations, and the ``M = 1`` embedding of
the first prompt alone); the function vector's heads (average indirect effect on corrupted
prompts); learn the soft head selections of every (task, seed), the ``M = 1`` ablation and the
task-agnostic selection together on the shared training loop (checkpointed: rerunning with the
same ``--workdir`` resumes); the task vector's layer on validation; evaluate on the test splits
(zero-shot, k-shot ICL, soft injection, the function and task vectors, the ablations and two
training-free controls; exact match, the paper's metric, and first-token accuracy from one
greedy generation each); cross-task transfer; time and memory of soft injection against 10-shot
ICL; figures, ``summary.json`` and ``report.md``. ``headlab run`` ends with :func:`headline`.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from common.progress import Laps, bar, stage
from common.rundir import RunDir
from projects.soft_injection import baselines, episodes, evaluate, plots, report, selection
from projects.soft_injection.configs.default import load_tasks, validate
from projects.soft_injection.paper import PAPER

PREFIX = "soft_injection"
MAIN = ("zero_shot", "icl_1", "icl_5", "icl_10", "soft_injection")
BASELINES = ("function_vector", "task_vector")
ABLATIONS = ("si_task_agnostic", "si_m1")
CONTROLS = ("uniform_mix", "si_binarised")


def settings(config) -> list[str]:
    """The evaluated settings, in table order."""
    out = (["zero_shot"] + [f"icl_{k}" for k in config.shots] + ["soft_injection"]
           + list(BASELINES))
    if "task_agnostic" in config.ablations and len(config.tasks) != 1:
        out.append("si_task_agnostic")
    if "m1" in config.ablations:
        out.append("si_m1")
    return out + [k for k in CONTROLS if k in config.controls]


def headline(summary: dict) -> list[str]:
    """The closing lines: mean accuracies beside the paper's gain, the cost saving, verdicts."""
    m, f = summary["mean"], summary["mean_first_token"]
    lo, hi = PAPER["gain_over_icl10_points"]
    icl = report.icl_key(m)
    gain = 100 * (m["soft_injection"] - m[icl])
    lines = [
        f"{summary['model']} on {len(summary['tasks'])} tasks x {len(summary['seeds'])} seed(s), "
        "exact match (first-token): " + ", ".join(
            f"{k} {v:.3f} ({f[k]:.3f})" for k, v in m.items()),
        f"  soft injection - {icl}: {gain:+.1f} points exact match (paper: +{lo} to +{hi} "
        "points, exact match, 12 LLMs of 4B-70B)",
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


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, loaded=None) -> dict:
    """Run the experiment into ``workdir`` (module docstring); returns the summary.

    ``loaded``: an already loaded ``(model, tokenizer)`` used instead of ``config.model``.
    """
    validate(config, check_tasks=False)
    lap = Laps()
    skipped: list[str] = []
    tasks = load_tasks(config, skipped)  # read and checked before anything is written
    rd = RunDir(workdir)
    from common.models import load_pretrained

    with stage("load", f"model {config.model}", prefix=PREFIX, enabled=loaded is None):
        model, tok = (loaded if loaded is not None
                      else load_pretrained(config.model, mesh=config.mesh or None))
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    shape = (L, H, cfg.d_head, cfg.d_model)
    lap("load")
    seeds = list(config.seeds)
    mt = config.max_prompt_tokens
    names_set = settings(config)
    agnostic = "si_task_agnostic" in names_set
    # ---- task embeddings ----------------------------------------------------------------------
    from common.interp.task_embedding import mean_at_last

    emb: dict[tuple[str, int], np.ndarray] = {}
    emb1: dict[tuple[str, int], np.ndarray] = {}
    resid: dict[tuple[str, int], np.ndarray] = {}
    emb_info: dict[str, dict] = {}
    with stage("embed", f"task embeddings: {len(tasks)} tasks x {len(seeds)} seeds, "
               f"{config.n_prompts} prompts of {config.n_shots} shots", prefix=PREFIX):
        for t in bar(tasks, "task embeddings", unit="task"):
            for s in seeds:
                rng = np.random.default_rng([s, 1])
                ep = episodes.embedding_prompts(tok, t.train, config.n_prompts, config.n_shots,
                                                rng, max_tokens=mt)
                got = mean_at_last(model, ep.tokens, ("z", "resid_post"),
                                   batch_size=config.embed_batch_size, keep=(0,))
                emb[t.name, s] = np.asarray(got["z"])
                resid[t.name, s] = np.asarray(got["resid_post"])
                emb1[t.name, s] = np.asarray(got["z/kept"][0])  # M = 1: the first prompt
                emb_info.setdefault(t.name, {"mean_tokens": ep.mean_length, "n_cut": ep.n_cut})
    lap("embed")
    # ---- function vector: heads by average indirect effect (seed 0, every task) --------------
    s0 = seeds[0]
    with stage("fv_heads", f"function-vector heads: indirect effect of {L * H} heads on "
               f"{config.fv_aie_prompts} corrupted {config.n_shots}-shot prompts per task",
               prefix=PREFIX):
        parts, t_rows = [], []
        for t in tasks:
            rng = np.random.default_rng([s0, 5])
            qi = rng.choice(len(t.train), size=min(config.fv_aie_prompts, len(t.train)),
                            replace=False)
            parts.append(episodes.build(tok, [t.train[i] for i in qi], t.train, config.n_shots,
                                        rng, max_tokens=mt, query_idx=qi.tolist(),
                                        shuffle_labels=True))
            t_rows += [emb[t.name, s0]] * len(qi)
        aie = baselines.indirect_effects(model, episodes.concat(parts), np.stack(t_rows))
        fv_heads = baselines.top_heads(aie, config.fv_heads)
        fv_layer = config.fv_layer if config.fv_layer >= 0 else L // 3
        fv = {k: baselines.function_vector(model, e, fv_heads) for k, e in emb.items()}
    lap("fv_heads")
    # ---- soft head selection --------------------------------------------------------------------
    zs_train, zs_valid = {}, {}
    for t in tasks:
        pool = list(t.train)[:config.max_train_items]
        rng = np.random.default_rng([config.split_seed, 2])
        zs_train[t.name] = episodes.build(tok, pool, t.train, 0, rng, max_tokens=mt)
        zs_valid[t.name] = episodes.build(tok, list(t.valid)[:config.val_items], t.train, 0, rng,
                                          max_tokens=mt)
    problems = [selection.Problem(f"{t.name}/seed{s}", emb[t.name, s], zs_train[t.name],
                                  zs_valid[t.name], s) for s in seeds for t in tasks]
    if "si_m1" in names_set:
        problems += [selection.Problem(f"{t.name}/seed{s}/m1", emb1[t.name, s],
                                       zs_train[t.name], zs_valid[t.name], s)
                     for s in seeds for t in tasks]
    if agnostic:  # one selection for all tasks: training prompts of every task, each its own t
        per = max(1, config.val_items // len(tasks))
        for s in seeds:
            problems.append(selection.Problem(
                f"all_tasks/seed{s}/agnostic", np.stack([emb[t.name, s] for t in tasks]),
                episodes.concat([zs_train[t.name] for t in tasks]),
                episodes.concat([zs_valid[t.name].head(per) for t in tasks]), s,
                np.concatenate([[i] * len(zs_train[t.name]) for i, t in enumerate(tasks)]),
                np.concatenate([[i] * len(zs_valid[t.name].head(per))
                                for i, t in enumerate(tasks)])))
    index = {p.name: i for i, p in enumerate(problems)}
    with stage("train", f"soft head selection of {len(problems)} problems together: "
               f"{config.steps} Adam steps (lr {config.lr}), validation and checkpoint every "
               f"{config.val_every}", prefix=PREFIX):
        sel = selection.learn_selection(
            model, problems, steps=config.steps, lr=config.lr, val_every=config.val_every,
            keep_best=config.keep_best, group_by_length=config.group_by_length,
            workdir=rd.root, metrics=rd.metrics, mesh=config.mesh or None)
    alpha = {(t.name, s): sel.alpha[index[f"{t.name}/seed{s}"]] for t in tasks for s in seeds}
    np.savez_compressed(rd.root / "alphas.npz", **{
        p.name: sel.alpha[i] for i, p in enumerate(problems)},
        **{f"embedding/{t}/seed{s}": v for (t, s), v in emb.items()})
    lap("train")
    # ---- task vector: the layer of best validation accuracy -------------------------------------
    tv_layer: dict[tuple[str, int], int] = {}
    with stage("tv_layer", f"task-vector layer on validation ({L} layers)", prefix=PREFIX):
        for t in bar(tasks, "task-vector layer", unit="task"):
            for s in seeds:
                tv_layer[t.name, s] = baselines.choose_tv_layer(
                    model, zs_valid[t.name], resid[t.name, s])[0]
    lap("tv_layer")
    # ---- evaluation: exact match and first token from one greedy generation per setting ------
    em = {t.name: {k: [] for k in names_set} for t in tasks}
    ft = {t.name: {k: [] for k in names_set} for t in tasks}
    test_sets: dict[str, episodes.Prompts] = {}
    n_cut_icl = 0
    bs = config.batch_size
    gen = dict(batch_size=bs, max_new_tokens=config.max_new_tokens)
    with stage("evaluate", f"{len(names_set)} settings on up to {config.test_items or 'all'} "
               f"test items per task, greedy decoding of {config.max_new_tokens} tokens",
               prefix=PREFIX):
        for t in bar(tasks, "evaluate", unit="task"):
            test = list(t.test)[:config.test_items or None]
            rng = np.random.default_rng([config.split_seed, 3])
            zs = episodes.build(tok, test, t.train, 0, rng, max_tokens=mt)
            test_sets[t.name] = zs

            def put(key, prompts, setting, t=t):
                f, e = evaluate.score(model, tok, prompts, t.name, setting=setting, **gen)
                ft[t.name][key].append(f)
                em[t.name][key].append(e)

            for j, s in enumerate(seeds):
                rng = np.random.default_rng([s, 4])
                if j == 0:  # 0-shot involves no sampling: scored once, the same for every seed
                    put("zero_shot", zs, evaluate.zero_shot_edit(shape))
                else:
                    ft[t.name]["zero_shot"].append(ft[t.name]["zero_shot"][0])
                    em[t.name]["zero_shot"].append(em[t.name]["zero_shot"][0])
                for k in config.shots:
                    pk = episodes.build(tok, test, t.train, k, rng, max_tokens=mt)
                    n_cut_icl += pk.n_cut
                    put(f"icl_{k}", pk, None)
                a, v = alpha[t.name, s], emb[t.name, s]
                put("soft_injection", zs, evaluate.zero_shot_edit(shape, alpha=a, v=v))
                put("function_vector", zs, evaluate.zero_shot_edit(
                    shape, add=(fv[t.name, s], fv_layer)))
                lay = tv_layer[t.name, s]
                put("task_vector", zs, evaluate.zero_shot_edit(
                    shape, replace=(resid[t.name, s][lay], lay)))
                if agnostic:
                    put("si_task_agnostic", zs, evaluate.zero_shot_edit(
                        shape, alpha=sel.alpha[index[f"all_tasks/seed{s}/agnostic"]], v=v))
                if "si_m1" in names_set:
                    put("si_m1", zs, evaluate.zero_shot_edit(
                        shape, alpha=sel.alpha[index[f"{t.name}/seed{s}/m1"]],
                        v=emb1[t.name, s]))
                if "uniform_mix" in names_set:
                    put("uniform_mix", zs, evaluate.zero_shot_edit(
                        shape, alpha=np.full((L, H), 0.5, np.float32), v=v))
                if "si_binarised" in names_set:
                    put("si_binarised", zs, evaluate.zero_shot_edit(
                        shape, alpha=(a > 0.5).astype(np.float32), v=v))
    lap("evaluate")
    # ---- cross-task transfer (seed 0, first token): alpha of task A, embedding of task B ------
    transfer = None
    if config.transfer and len(tasks) > 1:
        with stage("transfer", f"alpha of each task with the embedding of every other "
                   f"({len(tasks)}x{len(tasks)}, {config.transfer_items} items, first token)",
                   prefix=PREFIX):
            transfer = np.zeros((len(tasks), len(tasks)))
            for i, ta in enumerate(bar(tasks, "transfer", unit="task")):
                for j, tb in enumerate(tasks):
                    sub = test_sets[tb.name].head(config.transfer_items)
                    transfer[i, j] = evaluate.accuracy(model, sub, alpha=alpha[ta.name, s0],
                                                       v=emb[tb.name, s0], batch_size=bs)
    lap("transfer")
    # ---- cost: soft injection vs 10-shot ICL on the first task ---------------------------------
    with stage("cost", "inference time and prompt memory, soft injection vs the longest ICL",
               prefix=PREFIX):
        kmax = max(config.shots)
        t = tasks[0]
        test = list(t.test)[:min(len(t.test), bs)]  # one batch
        rng = np.random.default_rng(0)
        p0 = episodes.build(tok, test, t.train, 0, rng, max_tokens=mt)
        pk = episodes.build(tok, test, t.train, kmax, rng, max_tokens=mt)
        a, v = alpha[t.name, s0], emb[t.name, s0]
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
    def table(acc):
        out = {}
        for t in tasks:
            row = {k: float(np.mean(v)) for k, v in acc[t.name].items()}
            row.update({f"{k}_std": float(np.std(v)) for k, v in acc[t.name].items()
                        if len(v) > 1})
            out[t.name] = row
        return out

    per_task, per_task_ft = table(em), table(ft)
    for t in tasks:
        row = per_task[t.name]
        a = np.stack([alpha[t.name, s] for s in seeds])
        row["alpha_near_0"] = float(np.mean(a < 0.1))
        row["alpha_near_1"] = float(np.mean(a > 0.9))
        row["n_test"] = len(test_sets[t.name])
        row["embedding_prompt_tokens"] = emb_info[t.name]["mean_tokens"]
        row["best_step"] = [int(sel.best_step[index[f"{t.name}/seed{s}"]]) for s in seeds]
        row["tv_layer"] = [tv_layer[t.name, s] for s in seeds]
    mean = {k: float(np.mean([per_task[t.name][k] for t in tasks])) for k in names_set}
    mean_ft = {k: float(np.mean([per_task_ft[t.name][k] for t in tasks])) for k in names_set}
    seed_means = {k: [float(np.mean([em[t.name][k][j] for t in tasks])) for j in range(len(seeds))]
                  for k in names_set}
    si_rows = [index[f"{t.name}/seed{s}"] for t in tasks for s in seeds]
    summary: dict = {
        "model": config.model, "n_layers": L, "n_heads": H, "seeds": seeds,
        "settings": names_set, "metric": "exact_match",
        "tasks": per_task, "mean": mean, "mean_per_seed": seed_means,
        "first_token": per_task_ft, "mean_first_token": mean_ft,
        "memory_and_time": cost,
        "function_vector": {"heads": [list(h) for h in fv_heads], "layer": fv_layer,
                            "aie": np.round(aie, 5).tolist(),
                            "aie_prompts_per_task": config.fv_aie_prompts},
        "alpha_mean_over_tasks": np.round(np.mean(np.stack(list(alpha.values())), 0), 4).tolist(),
        "alpha_near_binary": float(np.mean([per_task[t.name]["alpha_near_0"]
                                            + per_task[t.name]["alpha_near_1"] for t in tasks])),
        "val_loss": {"steps": [0] + sel.val_steps,
                     "mean": np.round([sel.initial_val_loss[si_rows].mean(),
                                       *sel.val_loss[:, si_rows].mean(1)], 4).tolist()},
        "keep_best": bool(config.keep_best),
        "final_equals_kept": float(np.mean(np.all(np.isclose(
            sel.alpha[si_rows], sel.alpha_final[si_rows]), axis=(1, 2)))),
        "train_resumed_from": sel.resumed_from,
        "skipped_tasks": skipped,
        "icl_prompts_cut": n_cut_icl,
        "embedding_prompts_cut": {k: v["n_cut"] for k, v in emb_info.items() if v["n_cut"]},
    }
    names_t = [t.name for t in tasks]
    flat = np.stack([np.mean([alpha[n, s] for s in seeds], 0).ravel() for n in names_t])
    sim = _cosine(flat - flat.mean(1, keepdims=True))
    summary["selection_similarity"] = {"tasks": names_t, "matrix": np.round(sim, 3).tolist()}
    if transfer is not None:
        summary["transfer"] = {"tasks": names_t, "accuracy": np.round(transfer, 3).tolist(),
                               "seed": s0, "items": config.transfer_items}
    summary["claims"] = report.claims(summary)
    # ---- figures ------------------------------------------------------------------------------
    with stage("figures", "selection heatmaps, similarity, transfer, accuracies", prefix=PREFIX):
        shown = names_t[:config.heatmap_tasks]
        figs = {"alpha_heatmaps": plots.alpha_heatmaps(
                    {n: np.mean([alpha[n, s] for s in seeds], 0) for n in shown},
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


def _cosine(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n = np.where(n == 0, 1.0, n)
    y = x / n
    return y @ y.T


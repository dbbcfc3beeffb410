"""report.md of a soft_injection run: our numbers beside the paper's, the gaps stated."""

from __future__ import annotations

from projects.soft_injection.paper import PAPER
from projects.soft_injection.plots import label


def _icl_key(m: dict) -> str:
    return max((k for k in m if k.startswith("icl_")), key=lambda k: int(k[4:]))


def claims(summary: dict) -> list[dict]:
    """The paper's claims as far as this run tests them, each with ``holds``."""
    m = summary["mean"]
    icl = _icl_key(m)
    gain = 100 * (m["soft_injection"] - m[icl])
    lo, hi = PAPER["gain_over_icl10_points"]
    out = [
        {"claim": f"soft injection beats {label(icl)} on average (paper: by +{lo} to +{hi} "
                  "points)",
         "holds": gain > 0, "ours": f"{gain:+.1f} points"},
        {"claim": "soft injection beats zero-shot on average",
         "holds": m["soft_injection"] > m["zero_shot"],
         "ours": f"{m['soft_injection']:.3f} vs {m['zero_shot']:.3f}"},
        {"claim": "the learnt selection matters: it beats the untrained mixing a = 0.5",
         "holds": m["soft_injection"] > m["uniform_mix"],
         "ours": f"{m['soft_injection']:.3f} vs {m['uniform_mix']:.3f}"},
        {"claim": "most weights become near-binary (paper: 80-90% near 0 or 1)",
         "holds": summary["alpha_near_binary"] >= 0.8,
         "ours": f"{100 * summary['alpha_near_binary']:.0f}% below 0.1 or above 0.9"},
    ]
    tr = summary.get("transfer")
    if tr:
        import numpy as np

        a = np.asarray(tr["accuracy"])
        sim = np.asarray(summary["selection_similarity"]["matrix"])
        off = ~np.eye(len(a), dtype=bool)
        diag = float(np.mean(np.diag(a)))
        offm = float(np.mean(a[off]))
        # the transfer follows the similarity of the selections (needs 3+ tasks)
        r = (float(np.corrcoef(sim[off], a[off])[0, 1])
             if len(a) >= 3 and np.std(a[off]) > 0 and np.std(sim[off]) > 0 else None)
        out.append({"claim": "a selection transfers less well to other tasks than it serves its own",
                    "holds": diag > offm, "ours": f"own {diag:.3f} vs other tasks {offm:.3f}"})
        if r is not None:
            out.append({"claim": "transfer is better between tasks with similar selections",
                        "holds": bool(r > 0),
                        "ours": f"correlation {r:+.2f} between selection similarity and "
                                "transfer accuracy (off-diagonal pairs)"})
    return out


def render(summary: dict, config) -> str:
    m = summary["mean"]
    keys = summary["settings"]
    icl = _icl_key(m)
    gain = 100 * (m["soft_injection"] - m[icl])
    lo, hi = PAPER["gain_over_icl10_points"]
    n_tasks = len(summary["tasks"])
    seeds = summary["seeds"]
    mt = summary["memory_and_time"]
    lines = [
        "# Soft injection of task embeddings: SmolLM2 reproduction",
        "",
        "Large language models can learn a task from a few examples in the prompt (in-context "
        "learning, ICL). Park & Rhee (2025) remove the examples: they average each attention "
        "head's output over few-shot prompts of a task (the *task embedding* t), and at test time "
        "mix it into the heads of a zero-shot prompt at its last token, "
        "z' = (1 - a) z + a t, with one weight a per (layer, head) learnt on a few hundred "
        "examples (*soft head selection*). The paper reports that this beats 10-shot ICL by "
        f"{lo}-{hi} points on 57 tasks across 12 models of 4B-70B parameters, at the inference "
        f"cost of a zero-shot prompt. This run repeats the method on {summary['model']} "
        f"(135M parameters, {summary['n_layers']} layers x {summary['n_heads']} heads) on "
        f"{n_tasks} of the function-vector tasks with {len(seeds)} seed(s), scoring first-token "
        "accuracy.",
        "",
        "Notation: *0-shot* the bare query prompt; *ICL k-shot* k demonstrations from the train "
        "split before it; *soft injection* (SI) the 0-shot prompt with the learnt a and the "
        "task's t; *mix a=0.5* the same with the untrained a (every head 0.5, the initial "
        f"value); *top-k replace* a = 1 at the {config.baseline_top_k} heads whose few-shot mean "
        "moves furthest from their zero-shot mean (training-free, in the spirit of the "
        "function-vector / task-vector baselines; not their exact recipes); *SI binarised* "
        "a rounded to 0/1. Accuracies are means over tasks (and seeds).",
        "",
        "## Headline",
        "",
        "| setting | ours (mean over tasks) | paper |",
        "|---|---|---|",
    ]
    for k in keys:
        paper = ""
        if k == "soft_injection":
            paper = f"{label(icl)} + {lo}-{hi} points (exact match, 12 LLMs)"
        elif k == icl:
            paper = "the baseline SI is compared to"
        lines.append(f"| {label(k)} | {m[k]:.3f} | {paper} |")
    lines += [
        "",
        f"Soft injection minus {label(icl)}: **{gain:+.1f} points** here, **+{lo} to +{hi}** in "
        "the paper. The spec's own SmolLM2 pilot (6 tasks, 30 items, 150 steps) gave 0-shot "
        f"{PAPER['pilot_smollm2']['zero_shot']}, 10-shot {PAPER['pilot_smollm2']['icl_10']}, SI "
        f"{PAPER['pilot_smollm2']['soft_injection']}.",
        "",
        "## Claims",
        "",
        "| claim | ours | holds |",
        "|---|---|---|",
    ]
    for c in summary["claims"]:
        lines.append(f"| {c['claim']} | {c['ours']} | {'yes' if c['holds'] else 'no'} |")
    lines += ["", "## Per task", "",
              "| task | " + " | ".join(label(k) for k in keys) + " | a<0.1 | a>0.9 | n test |",
              "|---|" + "---|" * (len(keys) + 3)]
    for t, r in summary["tasks"].items():
        cells = []
        for k in keys:
            s = f"{r[k]:.2f}"
            if f"{k}_std" in r:
                s += f" ± {r[k + '_std']:.2f}"
            cells.append(s)
        lines.append(f"| {t} | " + " | ".join(cells)
                     + f" | {r['alpha_near_0']:.2f} | {r['alpha_near_1']:.2f} | {r['n_test']} |")
    lines += [
        "",
        "± is the standard deviation over seeds (0-shot has none: it involves no sampling). "
        "With n test items an accuracy p has a standard error of about sqrt(p(1-p)/n): about "
        f"±{(0.25 / max(1, min(r['n_test'] for r in summary['tasks'].values()))) ** 0.5:.2f} "
        "at the smallest n here, so single-task differences are mostly noise; the means are "
        "the numbers to read.",
        "",
        "## Memory and inference time",
        "",
        f"On {mt['task']} ({mt['items']} test items, batch {mt['batch_size']}, compiled programs "
        f"reused): an {label(icl)} prompt has {mt['tokens_' + icl]:.0f} tokens on average, the "
        f"0-shot prompt {mt['tokens_zero_shot']:.0f}. Inference takes "
        f"{1e3 * mt['seconds_per_prompt_' + icl]:.1f} ms per prompt with {label(icl)}, "
        f"{1e3 * mt['seconds_per_prompt_soft_injection']:.1f} ms with soft injection "
        f"({mt['speedup_vs_' + icl]:.1f}x faster; clean 0-shot "
        f"{1e3 * mt['seconds_per_prompt_zero_shot']:.1f} ms). The keys and values a prompt "
        f"keeps (float32) shrink from {mt['kv_bytes_' + icl] / 2**20:.2f} MiB to "
        f"{mt['kv_bytes_soft_injection'] / 2**20:.3f} MiB; the task embedding and weights cost "
        f"{mt['task_embedding_bytes'] / 2**10:.0f} KiB once per task. Learning the selection "
        f"took {mt['train_seconds_per_step'] or float('nan'):.2f} s per step for "
        f"{mt['train_problems']} (task, seed) pairs trained together.",
        "",
        "## Selection and transfer",
        "",
        f"{100 * summary['alpha_near_binary']:.0f}% of the learnt weights end below 0.1 or above "
        f"0.9 (paper: 80-90% after 400 steps; this run took {config.steps} steps). "
        "`figures/alpha_heatmaps.png` shows a per task; `figures/selection_similarity.png` the "
        "cosine similarity of the tasks' selections (centred per task)"
        + (" and the accuracy of each task's a used with another task's t" if summary.get(
            "transfer") else "") + ".",
        "",
        f"Validation keeps the best a (`keep_best={summary['keep_best']}`; the official code "
        "returns the last one, a bug the spec notes); for "
        f"{100 * summary['final_equals_kept']:.0f}% of the (task, seed) pairs the kept a is the "
        "final one.",
        "",
        "## Gaps and why",
        "",
        f"- **Model size.** 135M parameters against 4B-70B: here 0-shot reaches "
        f"{m['zero_shot']:.2f} and {label(icl)} {m[icl]:.2f} on average (the bare query prompt "
        "rarely elicits the answer format of a small model), so absolute accuracies are not "
        "comparable to the paper's; the comparison that transfers is soft injection against "
        "ICL on the same model and tasks.",
        "- **Metric.** First-token accuracy (the official code's default) rather than the "
        "paper's exact match; exact match by greedy decoding is not implemented here.",
        f"- **Scale.** {n_tasks} tasks (paper 57; `squad_val` is not shipped), up to "
        f"{config.test_items or 'all'} test items per task, {config.n_prompts} prompts x "
        f"{config.n_shots} shots per embedding (paper 50 x 10), {config.steps} steps (paper "
        f"400), validation on {config.val_items} items (paper 100).",
        "- **Baselines.** The paper's FV, TV, MTV, I2CL and LoRA baselines are not rerun; the "
        "two training-free baselines here only show whether the learnt selection matters.",
        f"- Prompts longer than {config.max_prompt_tokens} tokens lose front demonstrations "
        f"({summary['icl_prompts_cut']} ICL test prompts; embedding prompts: "
        f"{summary['embedding_prompts_cut'] or 'none'}).",
        "",
        "## Figures",
        "",
    ]
    for k, p in summary.get("figures", {}).items():
        lines.append(f"- `{p}` ({k})")
    if summary.get("figure_problems"):
        lines.append(f"- layout problems found: {summary['figure_problems']}")
    t = summary.get("timings", {})
    lines += ["", "## Run", "",
              f"Stage wall times (s): {t}; total {summary.get('total_seconds')} s.", ""]
    return "\n".join(lines)

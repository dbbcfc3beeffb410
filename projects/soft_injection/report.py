"""report.md of a soft_injection run: our numbers beside the paper's, the gaps stated."""

from __future__ import annotations

import numpy as np

from projects.soft_injection.paper import PAPER
from projects.soft_injection.plots import label


def five(keys) -> list[str]:
    """The issue's five settings (0-shot, the ICL shots, soft injection) among ``keys``."""
    return [k for k in keys if k in ("zero_shot", "soft_injection") or k.startswith("icl_")]


def icl_key(m: dict) -> str:
    """The ICL setting with the most demonstrations."""
    return max((k for k in m if k.startswith("icl_")), key=lambda k: int(k[4:]))


def claims(summary: dict) -> list[dict]:
    """The paper's claims as far as this run tests them (exact match), each with ``holds``."""
    m = summary["mean"]
    icl = icl_key(m)
    gain = 100 * (m["soft_injection"] - m[icl])
    lo, hi = PAPER["gain_over_icl10_points"]
    out = [
        {"claim": f"soft injection beats {label(icl)} on average (paper: by +{lo} to +{hi} "
                  "points, exact match)",
         "holds": gain > 0, "ours": f"{gain:+.1f} points exact match"},
        {"claim": "soft injection beats zero-shot on average",
         "holds": m["soft_injection"] > m["zero_shot"],
         "ours": f"{m['soft_injection']:.3f} vs {m['zero_shot']:.3f}"},
        {"claim": "soft injection beats the function-vector and task-vector baselines",
         "holds": m["soft_injection"] > max(m["function_vector"], m["task_vector"]),
         "ours": f"{m['soft_injection']:.3f} vs FV {m['function_vector']:.3f}, TV "
                 f"{m['task_vector']:.3f}"},
        {"claim": "most weights become near-binary (paper: 80-90% near 0 or 1)",
         "holds": summary["alpha_near_binary"] >= 0.8,
         "ours": f"{100 * summary['alpha_near_binary']:.0f}% below 0.1 or above 0.9"},
    ]
    if "uniform_mix" in m:
        out.append({"claim": "the learnt selection matters: it beats the untrained mixing a = 0.5",
                    "holds": m["soft_injection"] > m["uniform_mix"],
                    "ours": f"{m['soft_injection']:.3f} vs {m['uniform_mix']:.3f}"})
    if "si_m1" in m:
        p1 = PAPER["m1_ablation"]
        out.append({"claim": f"an embedding from M = 1 prompt still beats {label(icl)} (review, "
                             f"Table 4: {p1['soft_injection']}% vs {p1['icl_10']}%)",
                    "holds": m["si_m1"] > m[icl],
                    "ours": f"{m['si_m1']:.3f} vs {m[icl]:.3f}"})
    tr = summary.get("transfer")
    if tr:
        a = np.asarray(tr["accuracy"])
        sim = np.asarray(summary["selection_similarity"]["matrix"])
        off = ~np.eye(len(a), dtype=bool)
        diag = float(np.mean(np.diag(a)))
        offm = float(np.mean(a[off]))
        r = (float(np.corrcoef(sim[off], a[off])[0, 1])
             if len(a) >= 3 and np.std(a[off]) > 0 and np.std(sim[off]) > 0 else None)
        out.append({"claim": "a selection transfers less well to other tasks than it serves its own",
                    "holds": diag > offm,
                    "ours": f"own {diag:.3f} vs other tasks {offm:.3f} (first token)"})
        if r is not None:
            out.append({"claim": "transfer is better between tasks with similar selections",
                        "holds": bool(r > 0),
                        "ours": f"correlation {r:+.2f} between selection similarity and "
                                "transfer accuracy (off-diagonal pairs)"})
    return out


def _cell(row: dict, k: str) -> str:
    s = f"{row[k]:.2f}"
    return s + (f" ± {row[k + '_std']:.2f}" if f"{k}_std" in row else "")


def task_table(summary: dict, keys, *, first_token: bool = False) -> list[str]:
    """Markdown rows: one per task, one column per setting of ``keys`` present, then the
    mean over tasks."""
    rows = summary["first_token" if first_token else "tasks"]
    mean = summary["mean_first_token" if first_token else "mean"]
    keys = [k for k in keys if k in mean]
    out = ["| task | " + " | ".join(label(k) for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
    for t, r in rows.items():
        out.append(f"| {t} | " + " | ".join(_cell(r, k) for k in keys) + " |")
    out.append(f"| **mean of {len(rows)}** | " + " | ".join(f"**{mean[k]:.3f}**" for k in keys)
               + " |")
    return out


def render(summary: dict, config) -> str:
    m, f = summary["mean"], summary["mean_first_token"]
    keys = summary["settings"]
    icl = icl_key(m)
    gain = 100 * (m["soft_injection"] - m[icl])
    gain_ft = 100 * (f["soft_injection"] - f[icl])
    lo, hi = PAPER["gain_over_icl10_points"]
    n_tasks = len(summary["tasks"])
    seeds = summary["seeds"]
    mt = summary["memory_and_time"]
    fvd = summary["function_vector"]
    lines = [
        "# Soft injection of task embeddings: SmolLM2 reproduction",
        "",
        "Large language models can learn a task from a few examples in the prompt (in-context "
        "learning, ICL). Park & Rhee (2025) remove the examples: they average each attention "
        "head's output over few-shot prompts of a task (the *task embedding* t), and at test time "
        "mix it into the heads of a zero-shot prompt at its last token, "
        "z' = (1 - a) z + a t, with one weight a per (layer, head) learnt on a few hundred "
        "examples (*soft head selection*). The paper reports that this beats 10-shot ICL by "
        f"{lo}-{hi} points of exact match on 57 tasks across 12 models of 4B-70B parameters, at "
        f"the inference cost of a zero-shot prompt. This run repeats the method on "
        f"{summary['model']} (135M parameters, {summary['n_layers']} layers x "
        f"{summary['n_heads']} heads) on {n_tasks} of the function-vector tasks with "
        f"{len(seeds)} seed(s), scoring exact match as the paper does, and first-token accuracy "
        "(the official code's default) beside it.",
        "",
        "Notation: *0-shot* the bare query prompt; *ICL k-shot* k demonstrations from the train "
        "split before it; *soft injection* (SI) the 0-shot prompt with the learnt a and the "
        "task's t; *function vector* (FV, Todd et al.) the top "
        f"{len(fvd['heads'])} heads by average indirect effect, their mean outputs through the "
        f"output projection summed and added to the residual stream leaving layer "
        f"{fvd['layer']} at the last token; *task vector* (TV, Hendel et al.) the mean "
        "residual stream leaving a layer at the last token of ICL prompts, replacing it in the "
        "0-shot prompt at the layer best on validation; *SI task-agnostic* one a learnt on all "
        "the run's tasks together (each prompt injected with its own task's t); *SI M=1* t "
        "from a single prompt; *mix a=0.5* the untrained a; *SI binarised* a rounded to 0/1. "
        "*Exact match*: greedy decoding of up to "
        f"{config.max_new_tokens} tokens, the edit in the prompt's forward only (generated "
        "tokens see it through the KV cache), the first line cut at '(' and stripped, "
        "'St.' read as 'Saint', lower-cased except in the capitalize/lowercase tasks, and the "
        "answer a prefix of it. *First token*: the first generated token is the answer's first "
        "token. Accuracies are means over tasks (and seeds).",
        "",
        "## Headline",
        "",
        "| setting | exact match (mean over tasks) | first token | paper |",
        "|---|---|---|---|",
    ]
    for k in keys:
        paper = ""
        if k == "soft_injection":
            paper = f"{label(icl)} + {lo}-{hi} points (exact match, 12 LLMs)"
        elif k == icl:
            paper = "the baseline SI is compared to"
        elif k == "si_m1":
            p1 = PAPER["m1_ablation"]
            paper = f"{p1['soft_injection']}% vs 10-shot {p1['icl_10']}% (review; setup unknown)"
        lines.append(f"| {label(k)} | {m[k]:.3f} | {f[k]:.3f} | {paper} |")
    lines += [
        "",
        f"Soft injection minus {label(icl)}: **{gain:+.1f} points** of exact match here "
        f"({gain_ft:+.1f} first token), **+{lo} to +{hi}** in the paper. The spec's own SmolLM2 "
        "pilot (6 tasks, 30 items, 150 steps, first token) gave 0-shot "
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
    lines += ["", "## The five settings per task (exact match)", ""]
    lines += task_table(summary, five(keys))
    lines += ["", "## The five settings per task (first token)", ""]
    lines += task_table(summary, five(keys), first_token=True)
    rest = [k for k in keys if k not in five(keys)]
    lines += ["", "## Baselines, ablations and controls per task (exact match)", ""]
    lines += task_table(summary, rest)
    n_min = max(1, min(r["n_test"] for r in summary["tasks"].values()))
    lines += [
        "",
        "± is the standard deviation over seeds (0-shot has none: it involves no sampling). "
        "With n test items an accuracy p has a standard error of about sqrt(p(1-p)/n): about "
        f"±{(0.25 / n_min) ** 0.5:.2f} at the smallest n here ({n_min}), so single-task "
        "differences are mostly noise; the means are the numbers to read.",
        "",
        "## Baselines",
        "",
        f"Function vector: heads (layer, head) by average indirect effect on "
        f"{fvd['aie_prompts_per_task']} label-shuffled {config.n_shots}-shot prompt(s) per task "
        f"(one head set for the run, as the FV paper's universal set): "
        + ", ".join(f"L{h[0]}H{h[1]}" for h in fvd["heads"])
        + f"; added at layer {fvd['layer']} (n_layers // 3, as the FV paper's ~L/3). Task "
        "vector layers chosen on validation: "
        + ", ".join(f"{t} {r['tv_layer']}" for t, r in list(summary["tasks"].items())[:12])
        + (" ..." if n_tasks > 12 else "") + ".",
        "",
        "## Memory and inference time",
        "",
        f"On {mt['task']} ({mt['items']} test items, batch {mt['batch_size']}, compiled programs "
        f"reused, one forward): an {label(icl)} prompt has {mt['tokens_' + icl]:.0f} tokens on "
        f"average, the 0-shot prompt {mt['tokens_zero_shot']:.0f}. Inference takes "
        f"{1e3 * mt['seconds_per_prompt_' + icl]:.1f} ms per prompt with {label(icl)}, "
        f"{1e3 * mt['seconds_per_prompt_soft_injection']:.1f} ms with soft injection "
        f"({mt['speedup_vs_' + icl]:.1f}x faster; clean 0-shot "
        f"{1e3 * mt['seconds_per_prompt_zero_shot']:.1f} ms). The keys and values a prompt "
        f"keeps (float32) shrink from {mt['kv_bytes_' + icl] / 2**20:.2f} MiB to "
        f"{mt['kv_bytes_soft_injection'] / 2**20:.3f} MiB; the task embedding and weights cost "
        f"{mt['task_embedding_bytes'] / 2**10:.0f} KiB once per task. Learning the selection "
        f"took {mt['train_seconds_per_step'] or float('nan'):.2f} s per step for "
        f"{mt['train_problems']} problems trained together"
        + (f" (this run resumed its training at step {summary['train_resumed_from']})"
           if summary.get("train_resumed_from") else "") + ".",
        "",
        "## Selection and transfer",
        "",
        f"{100 * summary['alpha_near_binary']:.0f}% of the learnt weights end below 0.1 or above "
        f"0.9 (paper: 80-90% after 400 steps; this run took {config.steps} steps). "
        "`figures/alpha_heatmaps.png` shows a per task; `figures/selection_similarity.png` the "
        "cosine similarity of the tasks' selections (centred per task)"
        + (" and the first-token accuracy of each task's a used with another task's t"
           if summary.get("transfer") else "") + ".",
        "",
        f"Validation keeps the best a (`keep_best={summary['keep_best']}`; the official code "
        "returns the last one, a bug the spec notes); for "
        f"{100 * summary['final_equals_kept']:.0f}% of the (task, seed) pairs the kept a is the "
        "final one.",
        "",
        "## Gaps and why",
        "",
        f"- **Model size.** 135M parameters against 4B-70B: here 0-shot reaches "
        f"{m['zero_shot']:.2f} and {label(icl)} {m[icl]:.2f} exact match on average (the bare "
        "query prompt rarely elicits the answer format of a small model), so absolute "
        "accuracies are not comparable to the paper's; the comparison that transfers is soft "
        "injection against ICL on the same model and tasks.",
        f"- **Scale.** {n_tasks} tasks (paper 57; `squad_val` is not shipped), up to "
        f"{config.test_items or 'all'} test items per task (paper: the whole test split), "
        f"{config.n_prompts} prompts x {config.n_shots} shots per embedding (paper 50 x 10), "
        f"{config.steps} steps (paper 400), validation on {config.val_items} items (paper 100).",
        "- **Baselines.** FV and TV follow their papers' recipes at this scale (FV heads from "
        "few corrupted prompts; TV averaged over the embedding prompts rather than one "
        "demonstration set per query) and, like SI, edit the prompt's forward only (the FV "
        "code also adds the FV at every generated token, so FV exact match here is a lower "
        "bound of its recipe; first-token accuracy does not depend on it). MTV, I2CL and LoRA "
        "are not rerun. Decoding does not forbid an end-of-sequence first token "
        "(the official code's min_new_tokens=1).",
        *([f"- Task files left out (they fail the checks): {summary['skipped_tasks']}"]
          if summary.get("skipped_tasks") else []),
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

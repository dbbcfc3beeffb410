"""report.md of a pine run: our numbers beside the paper's, with the gaps stated."""

from __future__ import annotations

from projects.pine.paper import ISSUE_TARGETS, PAPER
from projects.pine.plots import LABEL


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def claims(summary: dict) -> list[dict]:
    """The checkable claims of the run, each ``{"claim", "holds", "evidence"}``."""
    out = []
    j = summary["judge"]
    out.append({"claim": "PINE's judge verdict never flips when the two labelled answers swap "
                         "places (flip rate exactly 0)",
                "holds": j["pine"]["flip_rate"] == 0.0,
                "evidence": f"flip rate {j['pine']['flip_rate']:.3f}; largest change of the "
                            f"A-vs-B log-odds {j['pine']['max_abs_logodds_change']:.1e}"})
    if "vanilla" in j:
        out.append({"claim": "vanilla's verdict depends on the order (the negative control)",
                    "holds": j["vanilla"]["max_abs_logodds_change"] > 1e-3,
                    "evidence": f"flip rate {j['vanilla']['flip_rate']:.3f}; log-odds change "
                                f"up to {j['vanilla']['max_abs_logodds_change']:.2f}"})
    flat = [max(res["pine"]) - min(res["pine"]) == 0.0 for res in summary["retrieval"].values()]
    out.append({"claim": "PINE's retrieval accuracy is the same at every gold position (flat)",
                "holds": all(flat),
                "evidence": "; ".join(f"{key}: {[_pct(a) for a in res['pine']]}"
                                      for key, res in summary["retrieval"].items())})
    bent = [max(res["vanilla"]) - min(res["vanilla"]) for res in summary["retrieval"].values()]
    out.append({"claim": "vanilla's retrieval accuracy depends on the gold position",
                "holds": any(b > 0 for b in bent),
                "evidence": "spread (max - min) " + ", ".join(
                    f"{key}: {_pct(b)} pts" for key, b in zip(summary["retrieval"], bent,
                                                               strict=True))})
    for key, target in ISSUE_TARGETS["time_ratio"].items():
        r = summary["time_ratio"].get(key)
        if r is not None:
            out.append({"claim": f"PINE's wall time at {key} is at most {target}x vanilla's "
                                 f"(issue target; paper about "
                                 f"{'2x at k=2' if key == 'k2' else '8x at k=20'})",
                        "holds": r <= target,
                        "evidence": f"{r:.2f}x (load average {summary['load_average']:.1f} on "
                                    f"{summary['cpus']} CPUs)"})
    return out


def render(summary: dict, figures: list[str]) -> str:
    """The markdown report."""
    j, r, t = summary["judge"], summary["retrieval"], summary["timing"]
    lines = [
        "# PINE: position-invariant inference on SmolLM2-135M-Instruct",
        "",
        "Language models answer differently when the same pieces of a prompt (documents, "
        "candidate answers) come in another order. PINE (Wang et al., 2024) removes this by "
        "changing attention only: the pieces (\"segments\") attend to each other in both "
        "directions, and in every layer and head each query sees the segments placed at "
        "positions ordered by how much it attends to them (most important nearest), so the "
        "order they were written in no longer matters. This run applies PINE and four "
        "baselines to SmolLM2-135M-Instruct (a model 60-800x smaller than the paper's) on two "
        "small tasks built offline (a judge choosing between a right and a wrong answer, and "
        "retrieving an access code from k documents) and times it. The paper's own evaluations "
        "(RewardBench, NaturalQuestions with Llama-3-70B, ...) are out of reach here; the "
        "invariance itself is exact and is what carries over.",
        "",
        "Notation: k segments; *gold first/second*: the correct answer's segment placed first "
        "or second (each segment carries its own label \"Assistant A/B\", so swapping segments "
        "keeps the labels); *flip rate*: share of items whose chosen label changes when the "
        "two segments swap; methods: vanilla (plain causal model), NIA (no attention between "
        "segments), PCW (parallel context windows: no attention between segments, all at the "
        "same positions), PINE, PINE w/o re-assignment (bidirectional segments at their "
        "sequence positions), PINE reversed (most important segment farthest).",
        "",
        f"Model: `{summary['model']}`; run time {summary['wall_s'] / 60:.1f} min on "
        f"{summary['cpus']} CPUs (load average {summary['load_average']:.1f}).",
        "",
        "## Claims",
        "",
        "| claim | holds | evidence |",
        "|---|---|---|",
    ]
    for c in summary["claims"]:
        lines.append(f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |")
    lines += [
        "",
        f"## Judge: {summary['judge_items']} pairs (correct vs wrong answer), scored by "
        "log P(A) vs log P(B) after `[[`",
        "",
        "| method | acc. gold first % | acc. gold second % | flip rate % | mean log-odds A:B |",
        "|---|---|---|---|---|",
    ]
    for m, v in j.items():
        lines.append(f"| {LABEL[m]} | {_pct(v['acc_gold_first'])} | {_pct(v['acc_gold_second'])}"
                     f" | {_pct(v['flip_rate'])} | {v['mean_logodds_a']:+.2f} |")
    pr = PAPER["judge_reasoning"]
    lines += [
        "",
        "Paper (RewardBench Reasoning, vanilla with shuffled order -> PINE): "
        + "; ".join(f"{name} {a} -> {b}" for name, (a, b) in pr.items())
        + f". Order effects in the paper: up to {PAPER['judge_max_flip_share']:.0%} of items "
        "flip; Qwen-1.5-4B scores 29.5 with the truth at A and 76.6 at B.",
        "",
        "Gap: our items are easy factual pairs, not RewardBench; at 135M parameters the judge "
        "is near chance and leans to one label (the mean log-odds column), which PINE does not "
        "remove: PINE is invariant to the *order* of labelled segments, not to the labels "
        "(papers/pine.md §11). What transfers exactly is the zero flip rate.",
        "",
        f"## Retrieval: k documents, {summary['retrieval_items']} items per k, each scored with "
        "the gold document at every position (accuracy %)",
        "",
    ]
    for key, res in r.items():
        k = len(res["vanilla"])
        lines += [f"**{key}**", "",
                  "| method | " + " | ".join(str(i + 1) for i in range(k)) + " | mean |",
                  "|---|" + "---|" * (k + 1)]
        for m, accs in res.items():
            lines.append(f"| {LABEL[m]} | " + " | ".join(_pct(a) for a in accs)
                         + f" | {_pct(sum(accs) / k)} |")
        lines.append("")
    lines += [
        f"Paper (NaturalQuestions, Llama-3-70B): PINE flat at about {PAPER['rag_pine_flat'][0]:.0f}"
        f"-{PAPER['rag_pine_flat'][1]:.0f}%, vanilla dips in the middle; PINE minus the vanilla "
        f"average {PAPER['rag_gain']['k10']:+.1f} (10 docs), {PAPER['rag_gain']['k20']:+.1f} "
        "(20 docs).",
        "",
        "Gap: synthetic documents with one unique fact each (a 135M model's retrieval, scored "
        "on the code's first digit among the k candidates), not open-domain QA; k <= 10, not 20.",
        "",
        "## Time and memory per forward (one prompt; seconds are medians of interleaved "
        "rounds)",
        "",
        "| k | tokens | plain forward | " + " | ".join(LABEL[m] for m in summary["methods"])
        + " | PINE / plain |",
        "|---|---|---|" + "---|" * (len(summary["methods"]) + 1),
    ]
    for key, row in t.items():
        lines.append(f"| {key[1:]} | {row['tokens']} | {row['plain']:.3f} | "
                     + " | ".join(f"{row[m]:.3f}" for m in summary["methods"])
                     + f" | {summary['time_ratio'][key]:.2f}x |")
    mem, mib = summary["memory_detail"], 2**20
    lines += [
        "",
        "Memory of each compiled forward program (MiB, from XLA's `memory_analysis`): "
        "temporaries (activations, scores, RoPE variants; what a method adds) / total "
        "(temporaries + arguments + outputs; the arguments are mostly the model's weights, "
        "the same for every method).",
        "",
        "| k | plain forward | " + " | ".join(LABEL[m] for m in summary["methods"])
        + " | PINE / plain temporaries |",
        "|---|---|" + "---|" * (len(summary["methods"]) + 1),
    ]
    for key, row in mem.items():
        lines.append(f"| {key[1:]} | " + " | ".join(
            f"{row[m]['temp'] / mib:.1f} / {row[m]['total'] / mib:.1f}"
            for m in ["plain", *summary["methods"]])
            + f" | {summary['temp_ratio'][key]:.2f}x |")
    lines += [
        "",
        f"Paper: about {PAPER['time_ratio']['k2 (judge)']:.0f}x at k = 2 and "
        f"{PAPER['time_ratio']['k20 (RAG)']:.0f}x at k = 20 (eager PyTorch, a Python loop "
        "over segments). Issue targets: <= 1.5x at k = 2, <= 4x at k = 10. The baselines run "
        "PINE's code path (importance included), so their times are PINE's, not their own "
        "minimum; the plain forward is the vanilla reference. On a loaded 2-core CPU the "
        "ratios move by tens of percent between runs; `python -m tools.bench_pine` measures "
        "them alone.",
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{f}](figures/{f})" for f in figures if f.endswith(".png")]
    if summary.get("figure_problems"):
        lines += ["", "Layout problems found: " + "; ".join(summary["figure_problems"])]
    lines += [
        "",
        "## What differs from the paper",
        "",
        "- Model: SmolLM2-135M-Instruct (30 layers, 9 heads on 3 KV heads), not Llama-3 or "
        "Qwen-1.5 8B-110B; the paper itself advises PINE only for capable models.",
        "- Data: built offline from seeds (judge questions from the function-vector "
        "country-capital and country-currency lists; synthetic access-code documents), scored "
        "by next-token log-likelihood instead of generation.",
        "- PINE w/o re-assignment keeps the sequence positions (the paper's ablation, not "
        "invariant); with the spec's stacked positions it would be invariant by construction.",
        "- Numerics: SmolLM2 runs in float32; invariance holds to float32 rounding of permuted "
        "sums, which the zero flip rate and the flat curves show (the tiny-model tests run in "
        "float64 and check it to 1e-10).",
        "- Memory: the paper reports only that the overhead is small (Llama-3-70B fits on "
        "3 A100-80G, as vanilla does); ours is the compiler's accounting of one program on CPU "
        "(temporaries beside the weights), not a measured device peak.",
    ]
    return "\n".join(lines) + "\n"

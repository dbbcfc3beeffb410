"""``report.md`` of an act_calibration run: our numbers beside the paper's, gaps stated."""

from __future__ import annotations

from projects.act_calibration.evaluate import SETTINGS
from projects.act_calibration.paper import PAPER


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(s: dict, config) -> str:
    """The markdown report of summary ``s``."""
    cal = s["calibration"]
    sk = s["sinks"]
    se = s["search"]
    g = s["gain_points"]
    lines = [
        "# ACT: hidden attention sinks and attention calibration on " + s["model"],
        "",
        "Large language models put much of their attention on a few tokens that carry little "
        "meaning, *attention sinks*: the first token, but also, Yu et al. (ICML 2024) observe, "
        "later tokens such as punctuation and newlines (*hidden sinks*). Their Attention "
        "Calibration Technique (ACT) finds, for each input and each chosen head, the tokens "
        "that receive on average more attention than a threshold, keeps only a fraction β of "
        "the attention every query pays them and hands the rest to the other tokens in "
        "proportion, without any training. Which heads to calibrate is chosen once, offline, "
        "by calibrating one head at a time on a calibration set and keeping those that help. "
        "The paper reports up to +7.3 points of average accuracy on Llama-30B. This run "
        f"repeats the pipeline on {s['model']} ({s['n_layers']} layers x {s['n_heads']} heads, "
        "135M parameters, 4-bit weights dequantised) with few-shot classification on the "
        "shipped datasets, and asks whether the gain appears at this scale: "
        f"**{s['verdict']}**.",
        "",
        "## Notation",
        "",
        "- A: a head's attention probabilities, rows = queries i, columns = keys j (causal).",
        "- Column score c_j = Σ_i A[i, j] / (number of queries that see j): the mean attention "
        "key j receives. A key is a **sink** when c_j > τ "
        f"(criterion `{cal['criterion']}`, τ = {cal['threshold']}); the first flagged key "
        "(almost always the first token) is spared, as in the released code. A *hidden* sink "
        "is a sink other than the first token.",
        f"- Calibration: sinks keep β·A (β = {cal['beta']}); the other keys of row i get "
        "A[i, j]·(1 + (1-β)·s_i/r_i), s_i / r_i the row's sink / non-sink mass; rows still sum "
        "to 1.",
        f"- ACT may edit layers {cal['layers'][0]}..{cal['layers'][1]} (the released code's "
        "2..30 of 32: the first two and the last layer are left alone).",
        "- Accuracy: argmax over classes of log p(label token | prompt) at the prompt's last "
        "token; the label token is the first token of \" \" + label word. "
        f"{s['shots']}-shot prompts; the demonstrations are drawn per seed (seeds "
        f"{s['seeds']}). Means over seeds; ± is the 95% Student-t interval over seeds.",
        "- Settings: *vanilla*; *ACT searched* (the heads the search kept); *ACT all* (every "
        "head of the range); *ACT random* (as many heads as the search kept, drawn per seed).",
        "",
        "## Accuracy (%)",
        "",
        "| dataset | n test | prompt tokens | " + " | ".join(SETTINGS) + " |",
        "|---|---|---|" + "---|" * len(SETTINGS),
    ]
    for d, row in s["accuracy"].items():
        cells = [f"{_pct(row[k])} ± {_pct(row[k + '_ci95'])}" for k in SETTINGS]
        lines.append(f"| {d} | {s['n_test'][d]} | {s['mean_prompt_tokens'][d]:.0f} | "
                     + " | ".join(cells) + " |")
    m = s["mean_accuracy"]
    lines.append("| **mean** | | | " + " | ".join(f"**{_pct(m[k])}**" for k in SETTINGS) + " |")
    lines += [
        "",
        f"Gain over vanilla, mean over datasets: searched heads **{g['act_searched']:+.2f}**, "
        f"all heads {g['act_all']:+.2f}, random heads {g['act_random']:+.2f} points. Per seed "
        f"the searched gain is {s['searched_gain_points_per_seed']} points (95% CI "
        f"±{s['searched_gain_ci95_points']}).",
        "",
        "| | paper (Yu et al. 2024) | this run |",
        "|---|---|---|",
        f"| model | Llama-2-7B-chat, Llama-30B, Mistral-7B, ... | {s['model']} (135M) |",
        f"| average accuracy gain | up to +{PAPER['best_avg_gain_points']} points "
        f"({PAPER['best_avg_gain_model']}, abstract) | {g['act_searched']:+.2f} points |",
        f"| heads calibrated | 184 of 928 (Llama-2-7B classification list) | {len(s['heads'])} "
        f"of {se['n_searched']} searched |",
        f"| calibration set | 900 train examples per task type | {se['n_examples']} examples "
        f"({config.n_calib} per dataset) |",
        f"| β, τ | {PAPER['beta']}, {PAPER['threshold']} | {cal['beta']}, {cal['threshold']} |",
        "",
        "The paper's per-dataset tables were not available to us (spec §8), so only its "
        "headline average is set beside ours; its datasets are the same families (SST-2, SST-5, "
        "MR, SUBJ, AGNews, TREC, CB, BoolQ, DBPedia) but its evaluation splits are complete "
        "and its default is zero-shot.",
        "",
        "## Sinks on real prompts",
        "",
        f"Over {sk['n_prompts']} few-shot prompts and every head: the first token is a sink in "
        f"{_pct(sk['initial_sink_rate'])}% of (head, prompt) pairs, and "
        f"{_pct(sk['hidden_sink_rate'])}% of pairs have at least one hidden sink (seen by at "
        f"least 1/τ queries; {sk['edge_sinks']} further flagged keys sit at the end of a "
        "prompt, where few queries see them and one query's self-attention can pass the bar: "
        "the released formula's edge effect, counted apart). Of the "
        f"{sk['hidden_sinks_total']} hidden (head, prompt, key) sinks, {sk['early_hidden_sinks']}"
        " sit at positions 1-3, right after the first token. "
        "Hidden sinks by token kind: "
        + ", ".join(f"{k} {v}" for k, v in sk["hidden_kinds"].items())
        + ". Most frequent hidden-sink tokens: "
        + ", ".join(f"{k} ({v})" for k, v in list(sk["top_hidden_tokens"].items())[:8]) + ".",
        "",
        "![attention maps](figures/attention_maps.png)",
        "",
        "![sink frequency](figures/sink_frequency.png)",
        "",
        "## Head search",
        "",
        f"{se['n_searched']} heads (layers {se['layers_searched']}) were calibrated one at a "
        f"time on {se['n_examples']} zero-shot calibration prompts (baseline accuracy "
        f"{_pct(se['baseline_accuracy'])}%); a head is kept when its accuracy beats the "
        f"baseline by more than {se['min_gain']}. Kept: {len(s['heads'])} heads "
        f"({s['heads'][:12]}{' ...' if len(s['heads']) > 12 else ''}); best single-head change "
        f"{se['best_gain'] and round(100 * se['best_gain'], 1)} points, worst "
        f"{se['worst_gain'] and round(100 * se['worst_gain'], 1)}. The search took "
        f"{se['seconds']:.0f} s with layer-prefix caching (the layers below a head's layer run "
        "once per batch; `tools/bench_act.py` times it against the uncached search). The head "
        "list is saved as `heads.json`."
        + (" **No head was kept**: no single calibrated head turned a wrong calibration "
           "prediction right without losing another, so *ACT searched* and *ACT random* (as "
           "many random heads: none) are the vanilla model here; with a calibration set this "
           "small an accuracy step is one prompt, and a finer criterion (the gold label's "
           "log-probability) would be the next thing to try." if not s["heads"] else ""),
        "",
        "![head search](figures/head_search.png)",
        "",
        "![accuracy](figures/accuracy.png)",
        "",
        "## Gaps and differences from the paper",
        "",
        "- **Scale.** 135M parameters, not 7B-30B. Small models classify few-shot close to "
        "chance on several of these sets, and a per-head edit of the attention moves few "
        "predictions; the spec expected that ACT may show no gain here.",
        "- **Calibration set.** A handful of examples per dataset (CPU time), not 900: the "
        "per-head accuracy changes are a few examples each, so the search's selection is "
        "noisy; heads that help on the calibration set need not help on the test set.",
        "- **Data.** The shipped files: SUBJ is a different 2,000-sentence sample, AG News and "
        "BoolQ are prefixes, TREC's label words are matched by class name (the release "
        "indexes them in the legacy order). Demonstrations and calibration examples come "
        "from disjoint parts of the same files where no training split is shipped.",
        "- **Weights.** The 4-bit GGUF checkpoint, dequantised: absolute accuracies differ "
        "from the bf16 model's.",
        "- **Not copied from the release:** its batch-element-0-only edit (every batch "
        "element is calibrated here), its unguarded division (a row with no non-sink mass is "
        "left unchanged), the environment-variable switches and the Mistral/MT-Bench bugs "
        "(spec §9).",
        "",
        f"Figures layout check: {s.get('figure_layout_problems') or 'no problems'}. Wall time "
        f"per stage (s): {s.get('timings')}.",
        "",
    ]
    return "\n".join(lines)

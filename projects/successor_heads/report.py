"""report.md of a run: our numbers beside the paper's, one claims table, the gaps stated."""

from __future__ import annotations

import ml_collections

from projects.successor_heads.paper import PAPER


def _h(row) -> str:
    return f"L{row[0]}H{row[1]}"


def claims(s: dict) -> list[dict]:
    """The paper's claims tested on one run. Each: ``{"claim", "paper", "ours", "holds"}``
    (``holds`` True / False; the tested model is the run's, not the paper's)."""
    out = []
    top, cp = s["top_heads"][0], s["copy_top_heads"][0]
    out.append({"claim": "the weight-based OV pipeline finds heads that exist (copy heads as "
                         "the positive control; planted heads in the tests)",
                "paper": "copy / successor heads found by the same OV product",
                "ours": f"best copy score {cp[2]:.3f} ({_h(cp)})", "holds": cp[2] >= 0.9})
    out.append({"claim": "the model has a successor head (succession score above the bar)",
                "paper": f"yes in Pythia 31M-12B, GPT-2, Llama-2-7B; bar {PAPER['threshold']} "
                         "(derivative code)",
                "ours": f"best {top[2]:.3f} ({_h(top)}), chance {s['chance']:.3f}, "
                        f"{s['n_above_threshold']} heads above {s['threshold']}",
                "holds": top[2] > s["threshold"]})
    second = s["top_heads"][1][2] if len(s["top_heads"]) > 1 else 0.0
    out.append({"claim": "one head stands out (Pythia-1.4B L12H0 about 8x the runner-up)",
                "paper": "about 8x", "ours": f"{top[2] / max(second, 1e-9):.2f}x",
                "holds": top[2] >= 2 * second and top[2] > s["threshold"]})
    ic = s.get("in_context")
    if ic:
        out.append({"claim": "the model continues ordinal lists in context (spec pilot)",
                    "paper": "pilot: April -> May, four -> five, E -> F at top-1",
                    "ours": f"{ic['top1']}/{ic['prompts']} list prompts right at top-1",
                    "holds": ic["top1"] >= 0.5 * ic["prompts"]})
    m = s.get("mod10")
    if m:
        out.append({"claim": "a modal SAE feature per units digit covers most of its residue "
                             "class",
                    "paper": f"mean coverage {PAPER['mod10_coverage']}",
                    "ours": f"mean coverage {m['coverage_mean']:.3f} ({m['n_saes']} SAEs); "
                            f"best run {sum(m['best_run']['coverage']) / 10:.3f}",
                    "holds": m["coverage_mean"] >= 0.5})
    ty = s.get("toy")
    if ty:
        b = ty["best_head_raw_embed"]
        out.append({"claim": "successor heads emerge where the data asks for them (toy model on "
                             "synthetic lists, the positive case)",
                    "paper": "successor heads in every model studied",
                    "ours": f"{_h(b)} {b[2]:.3f} (chance {ty['chance']:.3f}, training loss "
                            f"{ty['loss']:.4f})",
                    "holds": b[2] > s["threshold"]})
    ar = s.get("arithmetic")
    if ar:
        out.append({"claim": "editing the mod-10 feature moves the successor prediction (vector "
                             "arithmetic)",
                    "paper": "0.89 on numbers 20-29, 0.53 on months (weight-level, through the "
                             "successor head)",
                    "ours": f"{ar['best_rate']:.3f} at k = {ar['best_k']:g} in context "
                            f"(random direction {ar['control_at_best_k']:.3f}; "
                            f"{ar['n_edits']} edits)",
                    "holds": ar["best_rate"] >= 0.5 and ar["best_rate"]
                    > 3 * ar["control_at_best_k"]})
    return out


def _table(rows: list[list[str]], head: list[str]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def render(s: dict, config: ml_collections.ConfigDict) -> str:
    """Markdown report of one run (``s``: the summary)."""
    top = s["top_heads"]
    cl = claims(s)
    pilot = PAPER["pilot_smollm2"]
    has_head = top[0][2] > s["threshold"]
    cls = s["classes"]
    lines = [
        f"# successor_heads: Successor Heads (Gould et al. 2023/2024) on {s['model']}",
        "",
        "A *successor head* is an attention head that increments ordinal tokens: reading "
        "\"Monday\" it writes \"Tuesday\", reading \"3\" it writes \"4\". The paper finds such "
        "heads from the weights alone, by pushing each token's *effective embedding* through a "
        "head's OV map and the unembedding and checking whether the next item of the sequence "
        "comes out on top; it finds one in every model it studies (Pythia 31M-12B, GPT-2, "
        "Llama-2-7B). This run applies the same test to every head of "
        f"**{s['model']}** ({s['n_layers']} layers x {s['n_heads']} heads, "
        f"{s['n_kv_heads']} KV heads), then asks where the model's in-context succession "
        "actually happens, and repeats the paper's mod-10 feature and vector-arithmetic "
        "experiments. **Result: "
        + (f"{_h(top[0])} is a successor head (score {top[0][2]:.3f})."
           if has_head else
           f"{s['model']} has no successor head by the weight-based score: the best head "
           f"({_h(top[0])}"
           + (f", tied with {s['n_tied_best'] - 1} others" if s.get("n_tied_best", 1) > 1
              else "")
           + f") scores {top[0][2]:.3f} against a chance level of "
           f"{s['chance']:.3f} and the bar of {s['threshold']}, while the same code finds "
           f"copy heads at {s['copy_top_heads'][0][2]:.3f}.**")
        + (" The model does continue lists in context; the heads and MLPs that carry it are "
           "below." if s.get("in_context") else ""),
        "",
        "135M parameters with a tokenizer that splits numbers into digits is not the paper's "
        "setting: the paper's largest class (\"1\"..\"200\", 199 of its 288 pairs) shrinks to "
        "the nine pairs 0->1 .. 8->9, and mod 10 on numbers becomes the digit itself. The "
        "paper's own per-model numbers (GPT-2, Pythia) need their weights, which this machine "
        "does not have; the pipeline takes them (`--set model=/path/to/hf-folder`).",
        "",
        "## Claims",
        "",
        *_table([[c["claim"], c["paper"], c["ours"], "holds" if c["holds"] else "does not hold"]
                 for c in cl], ["claim", "paper", "this run", "verdict"]),
        "",
        f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold for {s['model']}.",
        "",
        "## Notation",
        "",
        "- W_E [vocab, d_model] embedding; MLP0 the MLP of layer 0; W_OV^{l,h} = W_V^{l,h} W_O^{l,h}"
        " (grouped-query: the V of KV head h // group); N_f the final norm; W_U the unembedding.",
        "- Effective embedding (`embed_mode`): `mlp0_only` = MLP0(N_2(W_E)) (the derivative "
        "code's `blocks[0].mlp(W_E)`, with the MLP's own input norm, which a SwiGLU needs); "
        "`resid_plus_mlp0` = W_E + MLP0(N_2(W_E)); `raw_embed` = W_E; `block0` = block 0 on "
        "the token alone.",
        f"- Effective OV logits of head (l, h): N_f(E_eff[t] W_OV^{{l,h}}) W_U (final norm "
        f"{'on' if s['final_norm'] else 'off'} in the main scan; the derivative has none).",
        "- Succession score: the fraction of (item, successor) pairs whose successor has the "
        "largest logit among the class's tokens (ties count), pooled over every pair of every "
        "class except the held-out Roman numerals; chance is the mean of 1/|class| over those "
        "pairs. Copy score: the item itself comes first (positive control).",
        "",
        "## Ordinal classes through the tokenizer",
        "",
        *_table([[n, str(c["kept"]), str(c["pairs"]), f"{c['chance']:.3f}",
                  ("held out" if c["held_out"] else "") + (" cyclic" if c["cyclic"] else ""),
                  "; ".join(c["dropped"]) or "-"]
                 for n, c in cls["classes"].items()],
                ["class", "kept items", "pairs", "chance", "notes", "dropped (reason)"]),
        "",
    ]
    if cls["dropped_classes"]:
        lines += ["Classes dropped entirely: " + "; ".join(
            f"`{n}` ({d['reason']})" for n, d in cls["dropped_classes"].items()), ""]
    lines += [
        f"Pooled: {s['n_pairs_pooled']} pairs, chance {s['chance']:.3f}. The paper's dictionary "
        "has 288 pairs (199 of them numbers).",
        "",
        "## Succession scores of every head",
        "",
        f"Main scan: `{s['embed_mode']}`, final norm {'on' if s['final_norm'] else 'off'}; "
        f"all {s['n_layers'] * s['n_heads']} heads in {s['scan_seconds']['warm']:.3f} s once "
        f"compiled ({s['scan_seconds']['first_call']:.2f} s with compilation). "
        "Figure: `figures/succession_heatmap.png`, per class: "
        "`figures/per_class_top_heads.png`.",
        "",
        *_table([[str(i + 1), _h(r), f"{r[2]:.3f}",
                  ", ".join(f"{k} {v:.2f}" for k, v in s["top_heads_per_class"][i]
                            ["per_class"].items())]
                 for i, r in enumerate(top)], ["rank", "head", "score", "per class"]),
        "",
        "Copy heads (control): " + ", ".join(f"{_h(r)} {r[2]:.3f}" for r in s["copy_top_heads"])
        + f" (pilot: L23H0 {pilot['copy_heads']['L23H0']}, L23H2 {pilot['copy_heads']['L23H2']},"
        f" L24H5 {pilot['copy_heads']['L24H5']}). Predecessor heads: "
        + ", ".join(f"{_h(r)} {r[2]:.3f}" for r in s["predecessor_top_heads"]) + ".",
        "",
        "Best head per class: " + "; ".join(
            f"{n} {_h(c['best_head'])} {c['best_head'][2]:.2f} (chance {c['chance']:.2f})"
            for n, c in s["per_class"].items()) + ".",
        "",
    ]
    if s["embed_modes"]:
        lines += ["Every effective-embedding choice (`figures/embed_modes.png`); the pilot "
                  f"found {pilot['best_score']} ({pilot['best_head']}) against chance "
                  f"{pilot['chance']} on 7 classes without the final norm:", "",
                  *_table([[m["embed_mode"], "on" if m["final_norm"] else "off",
                            f"{_h(m['best_head'])} {m['best_succession']:.3f}",
                            f"{_h(m['best_copy_head'])} {m['best_copy']:.3f}"]
                           for m in s["embed_modes"]],
                          ["embed_mode", "final norm", "best succession", "best copy"]), ""]
    if s.get("in_context_skipped"):
        lines += ["## In-context succession", "", f"Not run: {s['in_context_skipped']}.", ""]
    ic = s.get("in_context")
    if ic:
        lines += [
            "## In-context succession (beyond the paper)",
            "",
            "List prompts `List: t_a, t_a+1, ..., t_a+n-1,` (items with their space, a comma "
            "token after each) from every class; the model should write t_a+n. DLA and patching"
            " use the prompts it gets right at top-1; the metric is logit(successor) - "
            "logit(last item); the corrupted prompt holds the same items shuffled (last item "
            "changed, no neighbours in order). Patching replaces one head's z at all positions "
            "(or one layer's MLP output) in the shuffled run by the ordered run's: 1 = fully "
            "restored.",
            "",
            *_table([[n, str(a["prompts"]), str(a["top1"]), str(a["top3"]),
                      f"{a.get('logit_diff', float('nan')):.2f}",
                      f"{a.get('shuffled_logit_diff', float('nan')):.2f}"]
                     for n, a in ic["accuracy"].items()],
                    ["class", "prompts", "top-1", "top-3", "logit diff (ordered)",
                     "logit diff (shuffled)"]),
            "",
            "Top heads by direct effect (logits; weight-based succession and copy score "
            "beside): " + ", ".join(f"{_h(r)} {r[2]:+.2f} (succ {r[3]:.2f}, copy {r[4]:.2f})"
                                      for r in ic["top_dla_heads"][:6]) + ".",
            f"Sum over all heads {ic['dla_heads_total']:+.2f}, over all MLPs "
            f"{ic['dla_mlp_total']:+.2f}; largest MLPs: " + ", ".join(
                f"MLP{r[0]} {r[1]:+.2f}" for r in ic["top_dla_mlp_layers"]) + ".",
            "",
            "Reading the patching: replacing MLP0's output at every position transplants the "
            "tokens themselves"
            + (f" (MLP0's output is {s['mlp0_to_embed_norm_ratio']:.0f}x the norm of the raw "
               "embedding on the class tokens, so the residual after layer 0 is mostly MLP0)"
               if s.get("mlp0_to_embed_norm_ratio") else "")
            + ", so MLP0 restoring about everything is expected and says nothing about "
            "succession; the later layers are the informative ones.",
            "",
        ]
        if "top_patch_heads" in ic:
            lines += ["Top heads by activation patching (fraction restored): " + ", ".join(
                f"{_h(r)} {r[2]:.2f}" for r in ic["top_patch_heads"][:6]) + "; MLPs: "
                + ", ".join(f"MLP{r[0]} {r[1]:.2f}" for r in ic["top_patch_mlp_layers"])
                + f". Patched classes: {', '.join(ic['per_class_patch'])}."
                + (f" Skipped: {ic['patch_skipped']}." if ic.get("patch_skipped") else ""), ""]
        lines += ["Figures: `figures/incontext_heads.png`, `figures/incontext_layers.png`.", ""]
    co = s.get("contextual_ov")
    if co:
        t0 = co["top_heads"][0]
        lines += [
            "### The same score on in-context inputs",
            "",
            "Spec §12 step 4: each head's OV circuit fed with the value vector it actually reads "
            "at an item inside a list prompt (`List: t_i-2, t_i-1, t_i,`; the captured `v` "
            "site, its own input norm included) instead of MLP0(W_E). Top heads: " + ", ".join(
                f"{_h(r)} {r[2]:.3f}" for r in co["top_heads"][:5])
            + f" (chance {co['chance']:.3f}; copy control " + ", ".join(
                f"{_h(r)} {r[2]:.3f}" for r in co["copy_top_heads"]) + f"). {_h(t0)} per "
            "class: " + ", ".join(f"{k} {v:.2f}" for k, v in co["top_head_per_class"].items())
            + "."
            + (f" The head with the largest direct effect in context, {_h(co['dla_head'])}, "
               f"scores {co['dla_head_score']:.3f} here." if co.get("dla_head") else ""),
            "",
        ]
    nat = s.get("natural")
    if nat:
        h = f"L{nat['layer']}H{nat['head']}"
        ex = nat["examples"]
        show = [e for k in ("succession", "acronym", "greater_than", "copy", "other")
                for e in ex.get(k, [])[:1]] or [e for v in ex.values() for e in v][:3]
        sh = nat["shares"]
        lines += [
            f"## {h} on natural text",
            "",
            f"On {nat['texts']} AG News texts ({nat['positions']} positions) {h} attends "
            f"mostly to the first token (the attention sink) at all but "
            f"{nat['attending_away_from_first_token']} positions. Of those, the "
            f"{nat['selected']} with the strongest direct effect: succession "
            f"{sh['succession']:.2f}, acronym {sh.get('acronym', 0.0):.2f}, greater-than "
            f"{sh.get('greater_than', 0.0):.2f}, copying {sh['copy']:.2f}, other "
            f"{sh['other']:.2f}; the promoted token is the actual next token at "
            f"{nat['promotes_next_token']:.2f} of them. The paper's L12H0 in Pythia-1.4B: "
            f"acronyms {PAPER['pile_acronym_share']}, greater-than "
            f"{PAPER['pile_greater_than_share']}, the rest mostly succession (on the Pile, with "
            "mean ablation; a different measurement). Examples: " + "; ".join(
                f"`{e['context']}` -> attends to `{e['attends_to']}`, promotes "
                f"`{e['promotes']}`" for e in show) + ".",
            "",
        ]
    elif s.get("natural_skipped"):
        lines += ["## Natural text", "", f"Not run: {s['natural_skipped']}.", ""]
    m = s.get("mod10")
    if m:
        lines += [
            "## Mod-10 features",
            "",
            f"{m['n_tokens']} single-token numeric items (digits, number words, ordinal words in "
            "several spellings; the paper: numbers 0-500 with and without a space, which this "
            f"tokenizer does not have), {m['n_saes']} SAEs (λ in {m['l1']}), 90/10 split. "
            f"Validation FVU mean {m['fvu_val']['mean']:.3f} (best {m['fvu_val']['min']:.3f}); "
            f"mean active features {m['l0_val_mean']:.1f}. Modal feature coverage: mean "
            f"{m['coverage_mean']:.3f} over runs and residues (paper {PAPER['mod10_coverage']});"
            f" best run (λ {m['best_run']['l1']:g}) per residue "
            + ", ".join(f"{c:.2f}" for c in m["best_run"]["coverage"])
            + f", {m['best_run']['distinct_features']} distinct features for 10 residues. "
            "With about seven tokens per residue the SAE has far fewer inputs than dimensions: "
            "read these features as weak. Figure: `figures/mod10_features.png`.",
            "",
        ]
    ar = s.get("arithmetic")
    if ar:
        lines += [
            "## Vector arithmetic",
            "",
            f"Edits of the residual stream entering layer {ar['layer']} at the last item of a "
            "numeric list prompt: + k (s_b f_b - s_a f_a); success when the model's top "
            "candidate within the class is the successor of the item with units digit b. "
            "Success by k: " + ", ".join(f"k={k:g} {r:.3f} (random direction {c:.3f})"
                                         for k, r, c in zip(ar["ks"], ar["success_by_k"],
                                                            ar["control_by_k"], strict=True))
            + ". Per class at the best k: " + ", ".join(
                f"{c} {r:.2f}" for c, r in ar["per_class_at_best_k"].items())
            + ". The paper's edit goes through the successor head's OV circuit alone "
            "(weight-level); with no successor head here the edit is an intervention on the "
            "whole model. Figure: `figures/vector_arithmetic.png`.",
            "",
        ]
    ty = s.get("toy")
    if ty:
        b = ty["best_head_raw_embed"]
        lines += [
            "## The positive case: a tiny model trained on synthetic lists",
            "",
            f"A 2-layer model (RoPE, RMSNorm, SwiGLU, 4 heads on 2 KV heads) trained for "
            f"{ty['steps']} steps on `List: t_a, t_a+1, ...,` sequences of numbers 0-99, days, "
            "months and letters (next-token loss at the commas, where the next item is the "
            f"successor of the item one position back; final loss {ty['loss']:.4f}). The same "
            f"scan finds a successor head: {_h(b)} scores {b[2]:.3f} with `raw_embed` (chance "
            f"{ty['chance']:.3f}; per class " + ", ".join(
                f"{k} {v:.2f}" for k, v in ty["best_per_class"].items()) + "). By embedding: "
            + "; ".join(f"`{m}` {_h(v['top_heads'][0])} {v['top_heads'][0][2]:.3f}"
                        for m, v in ty["by_embed_mode"].items())
            + ". The successor heads sit in layer 0, which reads the raw embedding (MLP0 comes "
            "after it), so the `mlp0` effective embeddings, meant for heads above layer 0, "
            "miss them: the choice of effective embedding must match where the head sits. "
            "Figure: `figures/toy_succession_heatmap.png`.",
            "",
        ]
    lines += [
        "## Gaps",
        "",
        "- Not the paper's models: GPT-2/Pythia/Llama-2 weights are not on this machine, so the "
        "paper's heads (Pythia-1.4B L12H0, GPT-2 small L9H1) are not checked here; the code "
        "path is the same for their Hugging Face folders.",
        "- Tokenization: digits are single tokens only without a space; multi-digit numbers "
        "do not exist as tokens, so the paper's largest task and its 0-500 SAE inputs have no "
        "analogue.",
        "- The head's input norm (ln_1 of the head's layer) is not applied, as in the "
        "derivative; the core exposes no view of the norm scales.",
        "- Not done: the SAE and vector arithmetic on the toy model; the compositional "
        "index x domain subspace (paper §3.1); the linear mod-10 probe; the paper's Pile "
        "study with mean ablation (here only the direct effect of one head on AG News).",
        "",
        f"Run time {s.get('total_seconds', 0):.0f} s; stage times {s.get('timings', {})}.",
        "",
    ]
    return "\n".join(lines)

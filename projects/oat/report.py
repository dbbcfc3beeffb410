"""``report.md`` and the claims (one table; the same verdicts in summary.json and the closing
lines of ``headlab run``)."""

from __future__ import annotations

import ml_collections

from projects.oat import baselines as B
from projects.oat.paper import PAPER
from projects.oat.plots import LABELS

# PE: RMS of cos(W_i, W_j) − exp(−(i−j)²/2σ²) over i ≠ j must be below this.
PE_RMS_MAX = 0.01


def claims(s: dict) -> list[dict]:
    """``[{"id", "claim", "holds", "detail"}]``: OAT (sampled) beats every baseline on Δ and on
    sequence score; the learned PE matches its Gaussian."""
    m = _floats(s["metrics"])
    base = [k for k in B.NAMES if k in m]
    out = []
    d_oat = m["oat"]["behavioural_error"]
    worst = [k for k in base if m[k]["behavioural_error"] <= d_oat]
    out.append({"id": "delta", "claim": "OAT beats every baseline on the behavioural Δ",
                "holds": not worst,
                "detail": f"OAT {d_oat:.3f}; " + ", ".join(
                    f"{k} {m[k]['behavioural_error']:.3f}" for k in base)})
    ss_oat = m["oat"]["sequence_score"]
    worst = [k for k in base if m[k]["sequence_score"] >= ss_oat]
    out.append({"id": "ss", "claim": "OAT beats every baseline on the sequence score",
                "holds": not worst,
                "detail": f"OAT {ss_oat:.3f}; " + ", ".join(
                    f"{k} {m[k]['sequence_score']:.3f}" for k in base)})
    out.append({"id": "pe", "claim": "the learned PE's cosine similarity follows the Gaussian",
                "holds": s["pe"]["rms"] < PE_RMS_MAX,
                "detail": f"RMS error {s['pe']['rms']:.2e} (needs < {PE_RMS_MAX}), max "
                          f"{s['pe']['max_abs']:.2e}"})
    return out


def _floats(metrics: dict) -> dict:
    """Δ and SS per method as floats (summary.json stores an infinite Δ as ``"inf"``)."""
    return {k: {"behavioural_error": float(v["behavioural_error"]),
                "sequence_score": float(v["sequence_score"])} for k, v in metrics.items()}


def verdict_line(cl: list[dict]) -> str:
    return f"{sum(c['holds'] for c in cl)} of {len(cl)} claims hold"


def _f(x, nd: int = 3) -> str:
    """A number (also ``"inf"`` as summary.json writes infinities) with ``nd`` decimals."""
    return "–" if x is None else f"{float(x):.{nd}f}"


def render(s: dict, config: ml_collections.ConfigDict) -> str:
    """The report (a newcomer's paragraph, claims, the metrics table, notation, gaps)."""
    m = s["metrics"]
    mf = _floats(m)
    synthetic = s["dataset"] == "synthetic"
    quick = config.train.steps < 10_000 and config.model.d_app < 256
    cl = claims(s)
    base = [k for k in B.NAMES if k in m]
    best_d = min(base, key=lambda k: mf[k]["behavioural_error"])
    best_s = max(base, key=lambda k: mf[k]["sequence_score"])
    lines = [
        "# OAT: object-level scanpath prediction (Fang et al., ECCV 2024)",
        "",
        "People searching a shelf for one product look at objects, one after another, until "
        "they find it. OAT predicts that sequence of fixated objects (the *scanpath*): an "
        "encoder reads every object of the display (its image crop and its grid position, "
        "plus the target), and a decoder points at the next fixated object, step by step; "
        "pointing at the target token means \"stop\". We compare its scanpaths with the human "
        "ones by the behavioural error Δ (how far the average search behaviour is from the "
        "humans') and the sequence score (how much of the actual order it gets), against four "
        "simple baselines. "
        + ("This run uses our **synthetic** visual-search data (coloured shapes on a grid, "
           "scanpaths from a documented guided-search model), not the paper's data, which "
           "cannot be downloaded here; so the numbers test the method and the code, not the "
           "paper's results, whose table was not available to us either."
           if synthetic else f"This run uses the **{s['dataset']}** data.")
        + (" It is the quick CPU configuration: a reduced model (d_model "
           f"{s['model']['d_model']}, {s['model']['layers'][0]} + {s['model']['layers'][1]} "
           "layers instead of 512 and 4 + 4) trained briefly." if quick else ""),
        "",
        f"**{verdict_line(cl)}.**",
        "",
        "| claim | ours | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {c['claim']} | {c['detail']} | {'holds' if c['holds'] else 'fails'} |"
              for c in cl]
    margin_d = mf[best_d]["behavioural_error"] - mf["oat"]["behavioural_error"]
    margin_s = mf["oat"]["sequence_score"] - mf[best_s]["sequence_score"]
    lines += [
        "",
        f"Margins: Δ {_f(margin_d)} below the best baseline ({LABELS[best_d]}), sequence score "
        f"{_f(margin_s)} above the best baseline ({LABELS[best_s]}) (negative = OAT behind).",
        "",
        f"## Test metrics ({s['n_test']} trials; {s['samples']} sampled scanpaths per trial for "
        "OAT (sampled) and each baseline, one for OAT (greedy))",
        "",
        "The paper's numbers would stand in a second column of each cell; its results table is "
        "not available to us (spec §9), so the column reads \"n/a\".",
        "",
        "| method | Δ ↓ | SS ↑ | edit distance ↓ | MM vector | MM direction | MM length | "
        "MM position | MM mean ↑ | SIM ↑ | NSS ↑ | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in m.items():
        mm = v["multimatch"]
        lines.append(
            f"| {LABELS.get(k, k)} | {_f(v['behavioural_error'])} | {_f(v['sequence_score'])} | "
            f"{_f(v['edit_distance'], 2)} | {_f(mm['vector'])} | {_f(mm['direction'])} | "
            f"{_f(mm['length'])} | {_f(mm['position'])} | {_f(mm['mean'])} | {_f(v['sim'])} | "
            f"{_f(v['nss'], 2)} | n/a |")
    hs = s["human_stats"]
    lines += [
        "",
        "Search statistics (means over the test scanpaths; Δ compares these five):",
        "",
        "| method | found | length | search ratio | refixation ratio | revisit ratio |",
        "|---|---|---|---|---|---|",
        f"| human | {_f(hs['found'])} | {_f(hs['length'], 2)} | {_f(hs['search'])} | "
        f"{_f(hs['refix'])} | {_f(hs['revisit'])} |",
    ]
    for k, v in m.items():
        st = v["stats"]
        lines.append(f"| {LABELS.get(k, k)} | {_f(st['found'])} | {_f(st['length'], 2)} | "
                     f"{_f(st['search'])} | {_f(st['refix'])} | {_f(st['revisit'])} |")
    pe = s["pe"]
    lines += [
        "",
        "## Positional encoding",
        "",
        f"The {pe['rows']} × {pe['width']} table learned with the official objective (σ = "
        f"{pe['sigma']:g}, {config.pe.steps} Adam steps, lr {config.pe.lr}): cosine similarity "
        f"of rows i ≠ j against exp(−(i−j)²/2σ²) has RMS error {pe['rms']:.2e} and maximum "
        f"error {pe['max_abs']:.2e}; the row norms' std/mean is {pe['norm_spread']:.1e} "
        f"(paper: {PAPER['pe']['rows_amazon']} × {PAPER['pe']['width']} for Amazon, "
        f"{PAPER['pe']['rows_own']} × {PAPER['pe']['width']} for the own data; figure "
        "`positional_encoding`).",
        "",
        "## Notation and sources",
        "",
        "- A scanpath is the sequence of fixated object indices (EOS removed). Per scanpath: "
        "**found** = 1 if its last fixation is the target; **length**; it is cut into runs of "
        "one object; a run is a **revisit** if its object appeared in an earlier run, else a "
        "**search**; each run of r fixations adds r − 1 **refixations**; the three counts "
        "are divided by the length.",
        "- **Δ** = (1/5) Σ_k |m_k − g_k| / g_k over these five statistics, m the method's mean "
        "(per trial over its samples, then over trials), g the humans' on the same trials.",
        "- **SS** (sequence score) = Needleman–Wunsch with match 1, mismatch 0, gap 0 divided "
        "by the longer length (= LCS / max length); **edit distance** = Levenshtein (unit "
        "costs); **MultiMatch** (MM) = vector, direction, length and position similarity "
        "(multimatch-gaze without durations; predicted objects at their pixel centres); "
        "**SIM** = mean teacher-forced probability of the true next object over the human "
        "fixation steps; **NSS** = the z-scored binary map of the predicted fixation pixels "
        "read at the human fixations.",
        "- Baselines (our definitions; the official scripts are not public): fixation maps "
        "over objects (uniform; centre-biased Gaussian fitted to the training fixations; "
        "object colour contrast; crop similarity to the target), i.i.d. draws that stop at the "
        "target or at a length drawn from the training scanpaths.",
        "- Sources: spec `../shared/papers/oat.md` (architecture, metrics, quirks from the "
        "official code `HKUST-NISL/oat_eccv24` at 0c48c3e).",
        "",
        "## Run",
        "",
        f"{s['n_train']} / {s['n_val']} / {s['n_test']} train / validation / test trials on a "
        f"{s['grid'][0]} × {s['grid'][1]} grid; decoder length {s['max_len']} + 1. Model: "
        f"d_model {s['model']['d_model']}, {s['model']['layers'][0]} + "
        f"{s['model']['layers'][1]} layers, {s['model']['heads']} heads, "
        f"{s['model']['params']:,} parameters. {s['steps']} steps of Adam (lr "
        f"{config.train.lr:g}, batch {config.train.batch}, clip {config.train.clip:g}); "
        + ("the last parameters are tested (as the official code's `trainer.test`)"
           if s["select"] == "last" else "the parameters with the lowest validation Δ are tested")
        + f"; the lowest validation Δ of greedy decodes (the paper's monitor) was "
        f"{_f(s['best'].get('val_delta'))} at step {s['best'].get('step')}. Mean train step "
        f"{_f(s['train_mean_step_s'], 3)} s; total {s['total_seconds']} s "
        f"(stages: {', '.join(f'{k} {v} s' for k, v in s['timings'].items())}).",
        "",
        "## Gaps and deviations",
        "",
        "- **Data.** The paper's datasets (Amazon book covers, the authors' shelf data) are on a "
        "Google Drive without licence and cannot be fetched here; the TFDS builders read them "
        "from a user's folder (README.md), but no real-data number exists in this repository."
        if synthetic else "- **Data.** Real data as prepared by our TFDS builder.",
        "- **Published numbers.** The paper's results table was not available to us: no "
        "number here is compared with a published one.",
        "- **Model size.** " + ("The quick run's model is reduced (d_model "
                                f"{s['model']['d_model']} instead of 512, "
                                f"{s['model']['layers'][0]} + {s['model']['layers'][1]} layers "
                                "instead of 4 + 4, lr 1e-3 instead of 1e-4 for a short run); "
                                "its absolute numbers say nothing about the full model's."
                                if quick else "The paper's layer sizes; "
                                f"{s['model']['params']:,} parameters here (18,255,843 with "
                                "the paper's 150 × 93 crops on 6 × 14 shelves)."),
        "- **Training.** No patience-based early stop: training runs to the configured steps; "
        "the validation Δ of greedy decodes is logged and its best parameters kept "
        "(`best_params.npz`, `train.select=best` tests them); by default the last parameters "
        "are tested, as the official code does. On the synthetic data greedy decoding is "
        "degenerate (it fixates the most likely object, often the target, and stops), so its "
        "validation Δ is a noisy monitor. Dropout keys are drawn per batch. Attention and linear kernels are "
        "initialised with Xavier variance (normal for the per-head attention kernels, uniform "
        "elsewhere), biases at zero (torch: uniform for Linear biases).",
        "- **Baselines** are our definitions (above); the paper's may differ.",
        "- **NSS** follows the official binary map: a map with fewer distinct predicted "
        "pixels gets larger z-scores at its hits, so NSS rewards sparse predictions (one "
        "greedy scanpath scores far above 20 samples); compare it only between methods with "
        "the same number of scanpaths per trial.",
        "- **SIM** here counts the fixation steps only (not the EOS step), so that fixation "
        "maps without a stop probability compare with OAT.",
        "- **Crops.** Ours are RGB in [0, 1] for every dataset (the official Amazon crops stay "
        "BGR 0–255).",
    ]
    return "\n".join(lines) + "\n"

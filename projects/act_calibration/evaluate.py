"""Few-shot evaluation: vanilla vs ACT on the searched heads, on all heads, on random heads.

For each seed and dataset, ``k`` demonstrations are drawn from the dataset's demonstration pool
with that seed and shared by every test input (the released code's few-shot mode); the random
head set (as many heads as the search kept, drawn from the ACT layer range) is drawn with the
same seed. Every dataset's prompts of a seed are pooled into one set of batches (each row
scored on its own dataset's label tokens). The three ACT settings edit the whole layer range
with the heads as data (``act_intervention(..., whole_range=True)``), so one compiled program
serves them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from common.interp.act import act_intervention
from projects.act_calibration import prompts
from projects.act_calibration.data import Splits
from projects.act_calibration.scoring import Scorer, predictions
from projects.act_calibration.search import calib_items

SETTINGS = ("vanilla", "act_searched", "act_all", "act_random")


def random_heads(n: int, layers: Sequence[int], n_heads: int, seed: int) -> list[tuple[int, int]]:
    """``n`` distinct heads drawn uniformly from ``layers x range(n_heads)`` with ``seed``."""
    pool = [(int(layer), h) for layer in layers for h in range(n_heads)]
    rng = np.random.default_rng(10_000 + seed)
    pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return sorted(pool[i] for i in pick)


@dataclasses.dataclass
class EvalResult:
    """``accuracy[dataset][setting]``: one accuracy per seed; ``n_test[dataset]``."""

    accuracy: dict[str, dict[str, list[float]]]
    n_test: dict[str, int]
    prompt_tokens: dict[str, float]


def evaluate(scorer: Scorer, tokenizer, splits: dict[str, Splits], *, heads: Sequence,
             layers: Sequence[int], shots: int, seeds: Sequence[int], beta: float = 0.4,
             threshold: float = 0.1, criterion: str = "abs_colmean", max_words: int = 60,
             batch_tokens: int = 2048, settings: Sequence[str] = SETTINGS,
             progress: Callable | None = None) -> EvalResult:
    """Accuracy of every setting on every dataset and seed (see module docstring)."""
    cfg = scorer.config
    all_heads = [(int(layer), h) for layer in layers for h in range(cfg.n_heads)]
    acc: dict[str, dict[str, list[float]]] = {name: {s: [] for s in settings} for name in splits}
    n_test = {name: len(sp.test) for name, sp in splits.items()}
    tokens: dict[str, float] = {}
    for seed in (progress or (lambda x: x))(list(seeds)):
        ids, labels, gold, which = [], [], [], []
        for name, sp in splits.items():  # every dataset's prompts pooled into one batch set
            demos = prompts.sample_demos(sp.demos, shots, seed)
            ps = prompts.encode_prompts(tokenizer, sp.spec, demos, sp.test, max_words=max_words)
            tokens.setdefault(name, float(np.mean([len(p) for p in ps])))
            ids += ps
            labels += [prompts.label_tokens(tokenizer, sp.spec)] * len(ps)
            gold += [e.label for e in sp.test]
            which += [name] * len(ps)
        head_sets = {"act_searched": list(heads), "act_all": all_heads,
                     "act_random": random_heads(len(heads), layers, cfg.n_heads, seed)}
        which = np.asarray(which)
        right = {s: np.zeros(len(ids), bool) for s in settings}
        for item in calib_items(ids, labels, gold, batch_tokens=batch_tokens):
            b, n = item.batch, len(item.batch.rows)
            for s in settings:
                iv = None if s == "vanilla" else act_intervention(
                    cfg, head_sets[s], beta=beta, threshold=threshold, criterion=criterion,
                    layers=layers, token_valid=b.valid, whole_range=True)
                logp = scorer.label_logp(b, item.labels, iv)
                right[s][b.rows] = predictions(logp)[:n] == item.gold
        for name in splits:
            for s in settings:
                acc[name][s].append(float(right[s][which == name].mean()))
    return EvalResult(acc, n_test, tokens)


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, standard deviation (ddof 1; 0 for one value) and the half-width of the 95%
    Student-t confidence interval of the mean over seeds (0 for one value)."""
    v = np.asarray(values, float)
    if v.size < 2:
        return float(v.mean()), 0.0, 0.0
    from scipy import stats

    sd = float(v.std(ddof=1))
    return float(v.mean()), sd, float(stats.t.ppf(0.975, v.size - 1) * sd / np.sqrt(v.size))

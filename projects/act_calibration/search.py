"""The offline head search: calibrate one head at a time on a calibration set and keep the heads
whose calibration raises its accuracy (the released code's ``scripts/calibration.sh`` loop, plus
the selection step it leaves out).

Layer-prefix caching: calibrating a head of layer ``l`` changes nothing below ``l``, so for each
batch the residual entering every searched layer is computed once (one forward capturing
``resid_pre``) and each head's run starts at its own layer (``DecoderLM.run_blocks(start=l)``).
Every head of a layer shares one compiled program (the head is data in ``prob_heads``). With
``cached=False`` every head runs the whole forward: the same accuracies, slower (the test and
``tools/bench_act.py`` compare the two).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from common.interp.act import act_intervention
from projects.act_calibration.scoring import Batch, Scorer, make_batches, predictions


@dataclasses.dataclass(frozen=True)
class CalibItem:
    """One batch of calibration prompts: ``labels`` (the classes' token ids, ``[n_classes]``
    or per row ``[b, n_classes]`` with ``-1`` padding) and ``gold [len(batch.rows)]`` class
    ids of its real rows."""

    batch: Batch
    labels: np.ndarray
    gold: np.ndarray


def calib_items(prompt_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                gold: Sequence[int], *, batch_tokens: int = 2048) -> list[CalibItem]:
    """Calibration prompts of any datasets pooled into batches: prompt ``i`` with its classes'
    token ids ``labels[i]`` and gold class ``gold[i]``."""
    width = max(len(x) for x in labels)
    table = np.full((len(labels), width), -1, np.int32)
    for i, x in enumerate(labels):
        table[i, :len(x)] = x
    gold = np.asarray(gold)
    out = []
    for b in make_batches(prompt_ids, batch_tokens=batch_tokens):
        fill = np.concatenate([b.rows, np.repeat(b.rows[:1], b.ids.shape[0] - len(b.rows))])
        out.append(CalibItem(b, table[fill], gold[b.rows]))
    return out


@dataclasses.dataclass
class SearchResult:
    """``correct [n_layers, n_heads]`` (-1 where not searched), ``n`` examples, the baseline's
    correct count, the kept heads (accuracy above the baseline by more than ``min_gain``) and
    the wall time."""

    correct: np.ndarray
    n: int
    baseline_correct: int
    heads: list[tuple[int, int]]
    seconds: float
    min_gain: float

    @property
    def accuracy(self) -> np.ndarray:
        """Per-head accuracy with that head calibrated, ``[n_layers, n_heads]`` (NaN: not
        searched)."""
        return np.where(self.correct >= 0, self.correct / max(self.n, 1), np.nan)

    @property
    def baseline(self) -> float:
        return self.baseline_correct / max(self.n, 1)

    def summary(self) -> dict:
        gain = self.accuracy - self.baseline
        return {"n_examples": self.n, "baseline_accuracy": round(self.baseline, 4),
                "n_searched": int((self.correct >= 0).sum()), "n_kept": len(self.heads),
                "min_gain": self.min_gain,
                "best_gain": None if np.all(np.isnan(gain)) else round(float(np.nanmax(gain)), 4),
                "worst_gain": None if np.all(np.isnan(gain)) else round(float(np.nanmin(gain)), 4),
                "seconds": round(self.seconds, 1)}


def _count(logp: np.ndarray, item: CalibItem) -> int:
    n = len(item.batch.rows)
    return int((predictions(logp)[:n] == item.gold).sum())


def head_search(scorer: Scorer, items: Sequence[CalibItem], layers: Sequence[int], *,
                heads: Sequence[int] | None = None, cached: bool = True, beta: float = 0.4,
                threshold: float = 0.1, criterion: str = "abs_colmean", min_gain: float = 0.0,
                progress: Callable | None = None) -> SearchResult:
    """Accuracy on ``items`` with each head of ``layers`` calibrated alone.

    Args:
      scorer: the model's :class:`Scorer`.
      items: calibration batches (:class:`CalibItem`).
      layers: layers searched (each must lie where ACT may edit).
      heads: head indices searched in each layer (default all).
      cached: run the layers below the head's layer once per batch (layer-prefix caching).
      beta, threshold, criterion: the calibration.
      min_gain: keep a head when its accuracy exceeds the baseline by more than this.
      progress: wraps the iterable of batches (a progress bar).
    """
    cfg = scorer.config
    L, H = cfg.n_layers, cfg.n_heads
    heads = list(range(H)) if heads is None else list(heads)
    layers = sorted(int(x) for x in layers)
    correct = np.full((L, H), -1, np.int64)
    correct[np.ix_(layers, heads)] = 0
    base = 0
    n = 0
    t0 = time.perf_counter()
    for item in (progress or (lambda x: x))(list(items)):
        b = item.batch
        base += _count(scorer.label_logp(b, item.labels), item)
        n += len(b.rows)
        xs = scorer.resid_stack(b, layers) if cached else {}
        for layer in layers:
            for h in heads:
                iv = act_intervention(cfg, [(layer, h)], beta=beta, threshold=threshold,
                                      criterion=criterion, layers=(layer,), token_valid=b.valid)
                if cached:
                    logp = scorer.label_logp(b, item.labels, iv, x=xs[layer], start=layer)
                else:
                    logp = scorer.label_logp(b, item.labels, iv)
                correct[layer, h] += _count(logp, item)
    seconds = time.perf_counter() - t0
    gain = np.where(correct >= 0, correct - base, -np.inf) / max(n, 1)
    kept = [(int(a), int(c)) for a, c in zip(*np.nonzero(gain > min_gain), strict=True)]
    return SearchResult(correct, n, base, kept, seconds, min_gain)

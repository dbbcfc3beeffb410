"""Scores of predicted scanpaths against the human ones on the test trials (spec §8).

For a method with ``S`` scanpaths per trial (OAT's samples, a baseline's draws; greedy has 1):

* ``behavioural_error`` Δ: the five statistics averaged over each trial's ``S`` scanpaths, then
  over trials (``evaluation_full``), against the humans' means on the same trials;
* ``sequence_score``, ``edit_distance``: averaged over the samples, then over trials;
* ``multimatch``: each dimension averaged the same way (predicted objects → their pixel centres;
  the humans' recorded fixation pixels);
* ``nss``: per trial, the binary map of all the method's predicted centres read at the human
  fixation pixels, averaged over trials;
* ``sim``: teacher-forced mean probability of the true next object over the human fixation
  steps (EOS not counted, so that maps without a stop probability compare), averaged over trials.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from projects.oat import metrics as M
from projects.oat.data import Geometry


def score(samples: Sequence[Sequence[np.ndarray]], human: Sequence[np.ndarray],
          human_xy: Sequence[np.ndarray], targets: Sequence[int], geom: Geometry, *,
          sim: float | None = None, mm_samples: int = 10) -> dict:
    """Metrics of one method (module docstring).

    Args:
      samples: per trial, the method's scanpaths (each non-empty, object indices).
      human, human_xy: per trial, the human scanpath and its fixation pixels ``[T, 2]``.
      targets: per trial, the target index.
      geom: object centres and the screen size.
      sim: the method's teacher-forced SIM (computed by the caller), stored as is.
      mm_samples: MultiMatch on the first this many samples per trial (it is the slow one).
    """
    per_trial = np.stack([M.mean_behaviour(s, [t] * len(s)) for s, t in
                          zip(samples, targets, strict=True)])
    model_stats = per_trial.mean(0)
    human_stats = M.mean_behaviour(human, targets)
    ss = np.mean([np.mean([M.sequence_score(p, h) for p in s]) for s, h in
                  zip(samples, human, strict=True)])
    ed = np.mean([np.mean([M.edit_distance(p, h) for p in s]) for s, h in
                  zip(samples, human, strict=True)])
    mm = {k: [] for k in (*M.MM_DIMS, "mean")}
    nss = []
    for s, hxy in zip(samples, human_xy, strict=True):
        rows = [M.multimatch(geom.centres[np.asarray(p)], hxy, geom.screen)
                for p in s[:mm_samples]]
        for k in mm:
            mm[k].append(np.mean([r[k] for r in rows]))
        pred_xy = np.concatenate([geom.centres[np.asarray(p)] for p in s])
        nss.append(M.nss(pred_xy, hxy, geom.screen))
    return {
        "behavioural_error": M.behavioural_error(model_stats, human_stats),
        "sequence_score": float(ss),
        "edit_distance": float(ed),
        "multimatch": {k: float(np.mean(v)) for k, v in mm.items()},
        "sim": None if sim is None else float(sim),
        "nss": float(np.mean(nss)),
        "stats": dict(zip(M.STATS, model_stats.tolist(), strict=True)),
    }


def human_stats(human: Sequence[np.ndarray], targets: Sequence[int]) -> dict[str, float]:
    """The humans' five statistics (the reference of Δ)."""
    return dict(zip(M.STATS, M.mean_behaviour(human, targets).tolist(), strict=True))

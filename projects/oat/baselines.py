"""The baselines the paper's evaluation code expects (spec §9; their scripts are not public, so
these are our documented definitions).

Each baseline is an object-level fixation map ``m [N]`` (a distribution over the objects of a
display). A scanpath draws fixations i.i.d. from ``m`` and stops when it draws the target or
when it reaches a length ``L`` drawn from the training scanpaths' lengths, whichever is first.
Its teacher-forced SIM reads ``m`` at the true next object.

* ``random``: uniform.
* ``centre``: ``m_i ∝ exp(−‖pos_i − centre‖² / (2 s²))`` in grid units, ``s²`` = the mean squared
  distance of the training fixations from the grid centre (per axis).
* ``saliency``: bottom-up, object-level colour contrast: ``c_i`` = mean distance of the object's
  mean RGB to its 8 grid neighbours' plus its distance to the display's mean colour;
  ``m ∝ exp(z(c))`` with ``z`` the per-display z-score.
* ``target_similarity`` (the code's RGB similarity): ``d_i`` = mean absolute pixel difference
  between object ``i``'s crop and the target's; ``m ∝ exp(−z(d))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from projects.oat.data import crops_float

NAMES = ("random", "centre", "saliency", "target_similarity")


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _softmax(g: np.ndarray) -> np.ndarray:
    e = np.exp(g - g.max())
    return e / e.sum()


def centre_scale(train_paths: Sequence[np.ndarray], rows: int, cols: int) -> float:
    """``s²``: mean squared (row, col) distance of the training fixations from the centre, per
    axis."""
    c = np.array([(rows - 1) / 2, (cols - 1) / 2])
    f = np.concatenate([np.asarray(p) for p in train_paths])
    rc = np.stack([f // cols, f % cols], -1)
    return float(np.mean((rc - c) ** 2))


def fixation_map(name: str, crops: np.ndarray, target: int, rows: int, cols: int,
                 s2: float = 1.0) -> np.ndarray:
    """``m [N]`` of baseline ``name`` for one display (``crops [N, H, W, 3]``)."""
    n = rows * cols
    i = np.arange(n)
    rc = np.stack([i // cols, i % cols], -1).astype(np.float64)
    if name == "random":
        return np.full(n, 1.0 / n)
    if name == "centre":
        c = np.array([(rows - 1) / 2, (cols - 1) / 2])
        return _softmax(-np.sum((rc - c) ** 2, -1) / (2 * s2))
    x = crops_float(crops).astype(np.float64)
    if name == "saliency":
        mean = x.mean(axis=(1, 2))  # [N, 3]
        grid = mean.reshape(rows, cols, 3)
        contrast = np.zeros(n)
        for k in range(n):
            r, c = divmod(k, cols)
            nb = [grid[r + dr, c + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                  if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols]
            contrast[k] = np.mean([np.linalg.norm(mean[k] - v) for v in nb]) if nb else 0.0
        contrast += np.linalg.norm(mean - mean.mean(0), axis=-1)
        return _softmax(_z(contrast))
    if name == "target_similarity":
        d = np.abs(x - x[target]).mean(axis=(1, 2, 3))
        return _softmax(-_z(d))
    raise ValueError(f"unknown baseline {name!r}; known: {NAMES}")


def sample_scanpaths(m: np.ndarray, target: int, lengths: np.ndarray, n_samples: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """``n_samples`` scanpaths from map ``m``: i.i.d. draws, stop at the target or at a length
    drawn from ``lengths`` (the training scanpaths' lengths)."""
    out = []
    for _ in range(n_samples):
        cap = int(rng.choice(lengths))
        draws = rng.choice(len(m), size=cap, p=m)
        hit = np.flatnonzero(draws == target)
        out.append(draws[: hit[0] + 1] if len(hit) else draws)
    return out

"""Scanpath metrics with the official code's definitions (spec §8).

A scanpath is a 1-D int sequence of object indices with EOS removed; ``h`` is the human scanpath
of the same trial.

* :func:`behaviour` (``evaluation_model.behavior``): found, length, search / refixation /
  revisit ratios; :func:`behavioural_error` Δ = (1/5) Σ_k |m_k − g_k| / g_k on the test-set means.
* :func:`sequence_score` (Needleman–Wunsch with match 1, mismatch 0, gap 0, over max length =
  LCS / max length), :func:`edit_distance` (Levenshtein, unit costs, unnormalised).
* :func:`multimatch` (multimatch-gaze without the duration dimension, no grouping): vector,
  direction, length and position similarity on pixel fixations.
* :func:`nss` (binary map of predicted fixation pixels, z-scored, read at the human pixels) and
  :func:`sim_teacher_forced` (mean predicted probability of the true next object).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

STATS = ("found", "length", "search", "refix", "revisit")


def behaviour(s: Sequence[int], target: int) -> dict[str, float]:
    """The five search statistics of one scanpath ``s`` (non-empty) for ``target``.

    ``s`` is cut into maximal runs of one object (object ``k``, run length ``r``); a run is a
    *revisit* if ``k`` appeared in an earlier run, else a *search*; each run adds ``r − 1``
    *refixations*; the three counts sum to ``|s|`` and are returned as ratios of ``|s|``.
    """
    s = [int(x) for x in s]
    if not s:
        raise ValueError("behaviour: empty scanpath")
    search = refix = revisit = 0
    seen: set[int] = set()
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        if s[i] in seen:
            revisit += 1
        else:
            search += 1
            seen.add(s[i])
        refix += j - i
        i = j + 1
    n = len(s)
    return {"found": float(s[-1] == int(target)), "length": float(n), "search": search / n,
            "refix": refix / n, "revisit": revisit / n}


def mean_behaviour(paths: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """``[5]`` mean of :func:`behaviour` over scanpaths (order :data:`STATS`)."""
    rows = [[behaviour(p, t)[k] for k in STATS] for p, t in zip(paths, targets, strict=True)]
    return np.mean(np.asarray(rows, np.float64), axis=0)


def behavioural_error(model: np.ndarray, human: np.ndarray) -> float:
    """Δ = (1/5) Σ_k |m_k − g_k| / g_k with the official NaN-safe sum (``torch.nansum``): a
    statistic with m_k = g_k = 0 adds nothing; g_k = 0 < m_k makes Δ infinite."""
    m, g = np.asarray(model, np.float64), np.asarray(human, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(m - g) / g
    return float(np.nansum(rel) / len(g))


def sequence_score(pred: Sequence[int], gt: Sequence[int]) -> float:
    """Needleman–Wunsch score (match 1, mismatch 0, gap 0) / max(|pred|, |gt|) = LCS / max."""
    a, b = list(pred), list(gt)
    if not a and not b:
        return 1.0
    f = np.zeros((len(a) + 1, len(b) + 1))
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            f[i, j] = max(f[i - 1, j - 1] + (a[i - 1] == b[j - 1]), f[i - 1, j], f[i, j - 1])
    return float(f[-1, -1] / max(len(a), len(b)))


def edit_distance(pred: Sequence[int], gt: Sequence[int]) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1 each)."""
    a, b = list(pred), list(gt)
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return int(prev[-1])


# ---------------------------------------------------------------------------------------------
# MultiMatch (Jarodzka et al. 2010; the multimatch-gaze implementation, durations dropped)

MM_DIMS = ("vector", "direction", "length", "position")


def _pad_short(xy: np.ndarray) -> np.ndarray:
    """The official ``calculate_mm.py`` pads scanpaths shorter than 3 with (1, 1) points."""
    if len(xy) >= 3:
        return xy
    return np.concatenate([xy, np.ones((3 - len(xy), 2))], axis=0)


def _saccades(xy: np.ndarray) -> dict[str, np.ndarray]:
    """Saccade vectors of a fixation sequence ``[T, 2]``: start points, (dx, dy), length, angle."""
    d = np.diff(xy, axis=0)
    return {"x": xy[:-1, 0], "y": xy[:-1, 1], "dx": d[:, 0], "dy": d[:, 1],
            "rho": np.hypot(d[:, 0], d[:, 1]), "theta": np.arctan2(d[:, 1], d[:, 0])}


def _align(a: dict, b: dict) -> list[tuple[int, int]]:
    """Shortest path from (0, 0) to (n−1, m−1) through the matrix of saccade-vector differences
    (steps right, down or diagonal; cost = the matrix entries visited), as multimatch-gaze."""
    m = np.hypot(a["dx"][:, None] - b["dx"][None, :], a["dy"][:, None] - b["dy"][None, :])
    n1, n2 = m.shape
    dist = np.full((n1, n2), np.inf)
    prev: dict[tuple[int, int], tuple[int, int]] = {}
    dist[0, 0] = m[0, 0]
    heap = [(m[0, 0], 0, 0)]
    while heap:
        c, i, j = heapq.heappop(heap)
        if c > dist[i, j]:
            continue
        for di, dj in ((0, 1), (1, 0), (1, 1)):
            u, v = i + di, j + dj
            if u < n1 and v < n2 and c + m[u, v] < dist[u, v]:
                dist[u, v] = c + m[u, v]
                prev[(u, v)] = (i, j)
                heapq.heappush(heap, (dist[u, v], u, v))
    path = [(n1 - 1, n2 - 1)]
    while path[-1] != (0, 0):
        path.append(prev[path[-1]])
    return path[::-1]


def multimatch(pred_xy: np.ndarray, gt_xy: np.ndarray, screen: tuple[float, float]
               ) -> dict[str, float]:
    """MultiMatch vector / direction / length / position similarity in [0, 1] and their mean.

    Args:
      pred_xy, gt_xy: ``[T, 2]`` fixation pixels (x, y); shorter than 3 are padded with (1, 1).
      screen: ``(width, height)`` in pixels; ``diag`` = its diagonal.

    On the aligned saccade pairs (:func:`_align`), the medians of ‖v₁ − v₂‖, |θ₁ − θ₂| (wrapped
    to [0, π]), |ρ₁ − ρ₂| and ‖start₁ − start₂‖ become 1 − median / (2·diag), 1 − median / π,
    1 − median / diag and 1 − median / diag.
    """
    a = _saccades(_pad_short(np.asarray(pred_xy, np.float64)))
    b = _saccades(_pad_short(np.asarray(gt_xy, np.float64)))
    path = _align(a, b)
    i, j = np.array([p[0] for p in path]), np.array([p[1] for p in path])
    diag = math.hypot(*screen)
    vec = np.hypot(a["dx"][i] - b["dx"][j], a["dy"][i] - b["dy"][j])
    ang = np.abs(a["theta"][i] - b["theta"][j])
    ang = np.where(ang > np.pi, 2 * np.pi - ang, ang)
    length = np.abs(a["rho"][i] - b["rho"][j])
    pos = np.hypot(a["x"][i] - b["x"][j], a["y"][i] - b["y"][j])
    out = {"vector": 1 - np.median(vec) / (2 * diag), "direction": 1 - np.median(ang) / np.pi,
           "length": 1 - np.median(length) / diag, "position": 1 - np.median(pos) / diag}
    out = {k: float(v) for k, v in out.items()}
    out["mean"] = float(np.mean([out[k] for k in MM_DIMS]))
    return out


def nss(pred_xy: np.ndarray, gt_xy: np.ndarray, screen: tuple[int, int]) -> float:
    """NSS: the binary map (``height × width``) of predicted fixation pixels, z-scored, averaged
    at the human fixation pixels (``calculate_mm.py``: pixels rounded, clipped to the screen;
    a map without variation gives 0)."""
    w, h = int(screen[0]), int(screen[1])
    sal = np.zeros((h, w))

    def ij(xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xy = np.round(xy).astype(int)
        return np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)

    sal[ij(pred_xy)] = 1.0
    sd = sal.std()
    if sd == 0:
        return 0.0
    z = (sal - sal.mean()) / sd
    return float(z[ij(gt_xy)].mean())


def sim_teacher_forced(probs: np.ndarray, gt_next: np.ndarray) -> float:
    """SIM = Σ_t min(p_t, onehot(gt_t)) averaged over steps = mean_t p_t(gt_t).

    Args:
      probs: ``[T, K]`` predicted next-token distributions (teacher-forced).
      gt_next: ``[T]`` the true next tokens.
    """
    p = np.asarray(probs, np.float64)
    return float(np.mean(p[np.arange(len(gt_next)), np.asarray(gt_next)]))

"""Synthetic visual search: cluttered shelves of coloured shapes, one target, guided-search
scanpaths. Everything in the project runs and is tested on this without the real data.

**Display.** A ``rows × cols`` grid of objects (raster order: object ``i`` sits at row
``i // cols``, column ``i % cols``). Each object has a colour (one of ``n_colours``) and a shape
(one of ``n_shapes``); its crop ``[crop_h, crop_w, 3]`` in ``[0, 1]`` is the shape drawn in its
colour on a light background with a per-object brightness jitter and pixel noise. The target is
one object; every distractor differs from it in colour, shape or both (so the target is unique).

**Guided-search scanpath model** (the documented generator of the ground truth; each parameter is
a field of :class:`SearchModel`). A searcher holds the current fixation ``c`` (none before the
first) and the set of objects fixated so far. The next fixation is

1. a *re-fixation* of ``c`` (a consecutive repeat) with probability ``p_refix``; otherwise
2. an object ``i ≠ c`` drawn from ``softmax(g / temperature)`` with the guidance

       g_i = w_sim · sim(i, target) − w_dist · ‖pos_i − pos_c‖ − w_ior · 1[i fixated before]

   where ``sim`` = (shared colour + shared shape) / 2 (the target itself has 1), ``pos`` is the
   (row, col) in grid units, and before the first fixation ``pos_c`` is the grid centre (a centre
   bias). Inhibition of return is soft (``w_ior``), so *revisits* happen.
3. On fixating the target the searcher recognises it with probability ``p_detect``; once it
   has, it re-fixates the target with probability ``p_verify`` (a verification re-fixation) and
   then stops: the scanpath ends on the target (``found``). Otherwise the search goes on.
4. A scanpath that reaches ``max_len`` fixations stops there (not found).

Fixation pixels are object centres: object ``(r, c)`` is the cell ``[c·cell_w, (c+1)·cell_w) ×
[r·cell_h, (r+1)·cell_h)`` of a ``cols·cell_w × rows·cell_h`` screen.

Each trial is deterministic in ``(seed, index)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Colours (RGB in [0, 1]) and shapes (boolean masks drawn at crop size).
COLOURS = np.array([[0.85, 0.15, 0.15], [0.15, 0.65, 0.2], [0.15, 0.3, 0.85],
                    [0.9, 0.75, 0.1], [0.6, 0.2, 0.7], [0.1, 0.7, 0.75]], np.float32)
SHAPES = ("square", "disc", "cross", "triangle")


@dataclasses.dataclass(frozen=True)
class SearchModel:
    """Parameters of the guided-search scanpath model (module docstring)."""

    w_sim: float = 3.5
    w_dist: float = 0.9
    w_ior: float = 1.2
    temperature: float = 1.0
    p_refix: float = 0.15
    p_detect: float = 0.85
    p_verify: float = 0.3
    max_len: int = 16


@dataclasses.dataclass(frozen=True)
class Display:
    """Shelf geometry: grid, crop size and pixel cell size."""

    rows: int = 4
    cols: int = 6
    crop_h: int = 12
    crop_w: int = 8
    n_colours: int = 4
    n_shapes: int = 3
    cell_h: int = 60
    cell_w: int = 40

    @property
    def n(self) -> int:
        return self.rows * self.cols

    @property
    def screen(self) -> tuple[int, int]:
        """``(width, height)`` of the screen in pixels."""
        return self.cols * self.cell_w, self.rows * self.cell_h

    def grid_positions(self) -> np.ndarray:
        """``[N, 2]`` int (row, col) of each object in raster order."""
        i = np.arange(self.n)
        return np.stack([i // self.cols, i % self.cols], -1).astype(np.int32)

    def centres(self) -> np.ndarray:
        """``[N, 2]`` float (x, y) pixel centres of the objects."""
        rc = self.grid_positions().astype(np.float64)
        return np.stack([(rc[:, 1] + 0.5) * self.cell_w, (rc[:, 0] + 0.5) * self.cell_h], -1)


def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """``[h, w]`` bool mask of ``shape`` centred in the crop."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ry, rx = 0.42 * h, 0.42 * w
    u, v = (yy - cy) / ry, (xx - cx) / rx
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "disc":
        return u**2 + v**2 <= 1.0
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "triangle":
        return (u >= -0.9) & (u <= 0.9) & (np.abs(v) <= (u + 0.9) / 1.8)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(colour: int, shape: int, d: Display, rng: np.random.Generator) -> np.ndarray:
    """``[crop_h, crop_w, 3]`` float32 crop of one object with brightness jitter and noise."""
    img = np.full((d.crop_h, d.crop_w, 3), 0.92, np.float32)
    m = shape_mask(SHAPES[shape], d.crop_h, d.crop_w)
    img[m] = COLOURS[colour] * rng.uniform(0.85, 1.15)
    img += rng.normal(0.0, 0.04, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def similarity(features: np.ndarray, target: int) -> np.ndarray:
    """``sim [N]``: (shared colour + shared shape) / 2 with the target; features ``[N, 2]``."""
    return 0.5 * ((features[:, 0] == features[target, 0]).astype(np.float64)
                  + (features[:, 1] == features[target, 1]))


def scanpath(features: np.ndarray, target: int, d: Display, m: SearchModel,
             rng: np.random.Generator) -> np.ndarray:
    """One guided-search scanpath (module docstring): ``[T]`` int32 object indices."""
    pos = d.grid_positions().astype(np.float64)
    sim = similarity(features, target)
    centre = np.array([(d.rows - 1) / 2, (d.cols - 1) / 2])
    seen = np.zeros(d.n, bool)
    path: list[int] = []
    cur = -1
    while len(path) < m.max_len:
        if cur >= 0 and rng.random() < m.p_refix:
            nxt = cur
        else:
            here = centre if cur < 0 else pos[cur]
            g = m.w_sim * sim - m.w_dist * np.linalg.norm(pos - here, axis=1) - m.w_ior * seen
            if cur >= 0:
                g[cur] = -np.inf
            p = np.exp((g - g.max()) / m.temperature)
            nxt = int(rng.choice(d.n, p=p / p.sum()))
        path.append(nxt)
        seen[nxt] = True
        cur = nxt
        if nxt == target and rng.random() < m.p_detect:
            if len(path) < m.max_len and rng.random() < m.p_verify:
                path.append(nxt)
            break
    return np.asarray(path, np.int32)


def make_trial(seed: int, index: int, d: Display, m: SearchModel) -> dict[str, np.ndarray]:
    """Trial ``index``: a display, its target and one guided-search scanpath.

    Returns:
      ``crops [N, crop_h, crop_w, 3]`` float32, ``features [N, 2]`` int32 (colour, shape),
      ``target`` int32, ``scanpath [T]`` int32, ``fix_xy [T, 2]`` float32 pixels.
    """
    rng = np.random.default_rng((seed, index))
    nc, ns = min(d.n_colours, len(COLOURS)), min(d.n_shapes, len(SHAPES))
    tgt_feat = np.array([rng.integers(nc), rng.integers(ns)])
    combos = np.array([(c, s) for c in range(nc) for s in range(ns)
                       if (c, s) != tuple(tgt_feat)])
    target = int(rng.integers(d.n))
    feats = combos[rng.integers(len(combos), size=d.n)]
    feats[target] = tgt_feat
    crops = np.stack([render(int(c), int(s), d, rng) for c, s in feats])
    path = scanpath(feats, target, d, m, rng)
    return {"crops": crops, "features": feats.astype(np.int32), "target": np.int32(target),
            "scanpath": path, "fix_xy": d.centres()[path].astype(np.float32)}


def make_trials(n: int, d: Display, m: SearchModel, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` trials (deterministic in ``seed``)."""
    return [make_trial(seed, i, d, m) for i in range(n)]

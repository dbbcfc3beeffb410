"""Trials → checked, padded arrays for the model; splits; the dataset-level geometry.

A *trial* is a dict with ``crops [N, H, W, 3]`` (float in [0, 1] or uint8), ``target`` (0-based
object index), ``scanpath [T]`` (0-based object indices, EOS not included) and ``fix_xy [T, 2]``
(fixation pixels), optionally ``uid``/``layout_id``/``sub_id``. Every source (synthetic, the TFDS
builders of the real datasets) yields this form; :func:`check_trial` rejects a bad one with an
error naming the record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from common.data.errors import DataError

__all__ = ["DataError", "Geometry", "check_trial", "crops_float", "split", "to_arrays"]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Grid and screen of a dataset: ``rows × cols`` objects, object pixel ``centres [N, 2]``
    (x, y), ``screen`` = (width, height) in pixels (MultiMatch's diagonal, NSS's map)."""

    rows: int
    cols: int
    centres: np.ndarray
    screen: tuple[int, int]

    @property
    def n(self) -> int:
        return self.rows * self.cols


def check_trial(trial: dict, n: int, name: str) -> None:
    """Raise :class:`DataError` naming ``name`` unless ``trial`` is a valid trial of ``n``
    objects (crops ``[n, H, W, 3]``, target and every scanpath index in ``[0, n)``, a non-empty
    scanpath, ``fix_xy [T, 2]``)."""
    for k in ("crops", "target", "scanpath"):
        if k not in trial:
            raise DataError(f"{name}: missing field {k!r}")
    crops = np.asarray(trial["crops"])
    if crops.ndim != 4 or crops.shape[0] != n or crops.shape[-1] != 3:
        raise DataError(f"{name}: crops have shape {crops.shape}, expected [{n}, H, W, 3]")
    t = int(np.asarray(trial["target"]))
    if not 0 <= t < n:
        raise DataError(f"{name}: target index {t} is out of range for {n} objects")
    s = np.asarray(trial["scanpath"])
    if s.ndim != 1 or len(s) == 0:
        raise DataError(f"{name}: scanpath must be a non-empty 1-D index list, got shape {s.shape}")
    bad = np.flatnonzero((s < 0) | (s >= n))
    if len(bad):
        raise DataError(f"{name}: scanpath position {int(bad[0])} points at object "
                        f"{int(s[bad[0]])}, which does not exist ({n} objects, 0..{n - 1})")
    if "fix_xy" in trial and np.asarray(trial["fix_xy"]).shape != (len(s), 2):
        raise DataError(f"{name}: fix_xy has shape {np.asarray(trial['fix_xy']).shape}, "
                        f"expected ({len(s)}, 2)")


def crops_float(crops: np.ndarray) -> np.ndarray:
    """Crops as float32 in [0, 1] (uint8 is divided by 255)."""
    c = np.asarray(crops)
    return c.astype(np.float32) / 255.0 if c.dtype == np.uint8 else c.astype(np.float32)


def to_arrays(trials: Sequence[dict], n: int, max_len: int, *, name: str = "trial"
              ) -> dict[str, np.ndarray]:
    """Stack checked trials into model inputs (scanpaths longer than ``max_len`` are cut).

    Returns:
      ``crops [B, N, H, W, 3]`` float32, ``target [B]``, ``dec_in [B, max_len + 1]``
      (BOS = N + 2, the fixations, PAD = N + 1), ``dec_out [B, max_len + 1]`` (the fixations,
      EOS = N, PAD), ``uid [B]`` int32.
    """
    b = len(trials)
    pad, eos, bos = n + 1, n, n + 2
    dec_in = np.full((b, max_len + 1), pad, np.int32)
    dec_out = np.full((b, max_len + 1), pad, np.int32)
    for i, tr in enumerate(trials):
        check_trial(tr, n, f"{name} {tr.get('uid', i)}")
        s = np.asarray(tr["scanpath"], np.int32)[:max_len]
        dec_in[i, 0] = bos
        dec_in[i, 1:len(s) + 1] = s
        dec_out[i, :len(s)] = s
        dec_out[i, len(s)] = eos
    return {"crops": np.stack([crops_float(t["crops"]) for t in trials]),
            "target": np.array([int(t["target"]) for t in trials], np.int32),
            "dec_in": dec_in, "dec_out": dec_out,
            "uid": np.array([int(t.get("uid", i)) for i, t in enumerate(trials)], np.int32)}


def split(n_trials: int, seed: int = 0, order: np.ndarray | None = None
          ) -> dict[str, np.ndarray]:
    """The official split: a permutation (``order``, e.g. the paper's index file, else seeded),
    then the first 80% train, 80-90% validation, the last 10% test."""
    perm = np.random.default_rng(seed).permutation(n_trials) if order is None else np.asarray(order)
    if sorted(perm.tolist()) != list(range(n_trials)):
        raise DataError(f"split order is not a permutation of 0..{n_trials - 1}")
    a, b = int(n_trials * 0.8), int(n_trials * 0.9)
    return {"train": perm[:a], "validation": perm[a:b], "test": perm[b:]}

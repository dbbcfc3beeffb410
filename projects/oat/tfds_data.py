"""TFDS builders for the paper's datasets, from a user's folder, prepared to ArrayRecord without
TensorFlow and read with ``tfds.data_source`` (random access, grain-ready), as
:mod:`common.data.tfds_tokens`.

Both builders read the **official repositories' formats** from ``manual_dir`` (nothing is
downloaded; the data has no licence, see README.md):

* ``oat_amazon`` — the authors' Amazon book-cover repackaging (Google Drive folder
  ``amazon_data/``): ``amazon_data.json`` (``{image: {"fixations": {subject: [[x, y], ...]},
  "ground_truth": [{"xmin", "xmax", "ymin", "ymax"}], "target": str, ...}}``), ``images/<image>``
  and ``binarymask/14x6-<image>`` (white cover boxes on black). Processing as the correct
  ``img_feature_amazon.py`` (commit 927573a): boxes = bounding boxes of the mask's white regions
  (threshold 127), sorted by ``(ymin // 10 · 10, xmin)``, each cropped and resized to
  ``crop_w × crop_h`` (93 × 150); the target = the box of largest IoU with the ground truth; a
  fixation maps to the first box containing it, else the nearest box centre; scanpaths whose
  length is outside mean ± 3 std are dropped. Crops are kept RGB (the official code keeps BGR).
* ``oat_shelf/{wine,yogurt,shampoo}`` — the authors' own data as ``img_feature.py`` writes it:
  one pickle (``dataset_Q123_mousedel_time_new``), a list of dicts with ``package_target``
  (1-based), ``package_seq`` (1-based object per fixation), ``X``, ``Y``,
  ``question_img_feature`` (N crops 150 × 93 × 3, RGB min-max scaled to [0, 1]), ``id``
  (``Q1`` wine 2 × 11, ``Q2`` shampoo 3 × 9, ``Q3`` yogurt 3 × 9), ``tgt_id``, ``layout_id``,
  ``sub_id``. The pickle is read with an unpickler that admits only numpy arrays and builtins.

Splits (``randsplit`` of ``data_builder.py``): a permutation of the records (the paper's index
file if ``manual_dir`` has one: ``splitlist_all_amazon.txt`` for Amazon, ``split_file`` of the
shelf config; else a seeded permutation), then per category the first 80% train, 80-90%
validation, the last 10% test.

Every example: ``crops [N, H, W, 3]`` uint8, ``target``, ``scanpath [T]`` (0-based), ``fix_xy
[T, 2]`` pixels, ``uid``, ``layout_id``, ``sub_id``, ``tgt_id``. Bad input raises
:class:`projects.oat.data.DataError` naming the file and the record.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from projects.oat.data import DataError, Geometry, check_trial, split

# (rows, cols), cell (h, w) and top offset for object pixel centres (calculate_mm.py), screen
GRIDS = {"amazon": ((6, 14), (267, 183, 0), (2562, 1602)),
         "wine": ((2, 11), (449, 152, 152), (1680, 1050)),
         "yogurt": ((3, 9), (305, 186, 135), (1680, 1050)),
         "shampoo": ((3, 9), (295, 186, 165), (1680, 1050))}
SHELF_IDS = {"wine": "Q1", "shampoo": "Q2", "yogurt": "Q3"}


def geometry(name: str) -> Geometry:
    """Grid, object pixel centres ``x = col·w + w/2, y = top + row·h + h/2`` and screen."""
    (rows, cols), (h, w, top), screen = GRIDS[name]
    i = np.arange(rows * cols)
    centres = np.stack([(i % cols) * w + w / 2, top + (i // cols) * h + h / 2], -1)
    return Geometry(rows, cols, centres.astype(np.float64), screen)


def _features(n: int, crop_h: int, crop_w: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "crops": tfds.features.Tensor(shape=(n, crop_h, crop_w, 3), dtype=np.uint8),
        "target": tfds.features.Scalar(dtype=np.int32),
        "scanpath": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "fix_xy": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
        "uid": tfds.features.Scalar(dtype=np.int32),
        "layout_id": tfds.features.Text(),
        "sub_id": tfds.features.Text(),
        "tgt_id": tfds.features.Text(),
    })


def _read_order(path: pathlib.Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        order = np.array([int(x) for x in path.read_text().split()])
    except ValueError as e:
        raise DataError(f"{path}: split index file is not a list of integers ({e})") from e
    if sorted(order.tolist()) != list(range(n)):
        raise DataError(f"{path}: split index file is not a permutation of 0..{n - 1} "
                        f"({len(order)} entries)")
    return order


def _splits(records: list[dict], order: np.ndarray | None, seed: int = 0) -> dict[str, list]:
    idx = split(len(records), seed=seed, order=order)
    return {k: [records[i] for i in v] for k, v in idx.items()}


# ---------------------------------------------------------------------------------------------
# Amazon


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` bounding boxes (x2, y2 exclusive) of the white regions of a mask
    image ``[H, W(, 3)]`` (gray > 127), sorted by ``(y1 // 10 · 10, x1)`` as the official code."""
    from scipy import ndimage

    gray = mask if mask.ndim == 2 else mask[..., :3].mean(-1)
    lab, n = ndimage.label(gray > 127)
    boxes = []
    for sl in ndimage.find_objects(lab):
        ys, xs = sl
        boxes.append((xs.start, ys.start, xs.stop, ys.stop))
    return sorted(boxes, key=lambda b: (b[1] // 10 * 10, b[0]))


def _iou(gt: dict, box) -> float:
    xl, yt = max(gt["xmin"], box[0]), max(gt["ymin"], box[1])
    xr, yb = min(gt["xmax"], box[2]), min(gt["ymax"], box[3])
    if xr < xl or yb < yt:
        return 0.0
    inter = (xr - xl) * (yb - yt)
    a = (gt["xmax"] - gt["xmin"]) * (gt["ymax"] - gt["ymin"])
    b = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (a + b - inter)


def fixations_to_boxes(xy: np.ndarray, boxes) -> np.ndarray:
    """Each fixation → the first box containing it (inclusive edges), else the nearest centre."""
    b = np.asarray(boxes, np.float64)
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], -1)
    out = []
    for x, y in xy:
        inside = np.flatnonzero((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3]))
        out.append(int(inside[0]) if len(inside) else
                   int(np.argmin(np.hypot(centres[:, 0] - x, centres[:, 1] - y))))
    return np.asarray(out, np.int32)


def length_filter(records: list[dict]) -> list[dict]:
    """Keep scanpaths whose length is within mean ± 3 std (over all records)."""
    n = np.array([len(r["scanpath"]) for r in records], np.float64)
    lo, hi = n.mean() - 3 * n.std(), n.mean() + 3 * n.std()
    return [r for r, k in zip(records, n, strict=True) if lo <= k <= hi]


def _amazon_root(manual: pathlib.Path) -> pathlib.Path:
    for cand in (manual, manual / "amazon_data", manual / "dataset" / "amazon_data"):
        if (cand / "amazon_data.json").exists():
            return cand
    raise FileNotFoundError(f"{manual}: no amazon_data.json (expected {manual}/amazon_data/"
                            "amazon_data.json with images/ and binarymask/ beside it)")


def amazon_records(manual: pathlib.Path, crop_h: int = 150, crop_w: int = 93,
                   n_objects: int = 84) -> list[dict]:
    """Read and process the Amazon folder (module docstring) into trials (before splitting)."""
    from PIL import Image

    root = _amazon_root(pathlib.Path(manual))
    meta_path = root / "amazon_data.json"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected an object {{image name: record}}")
    records = []
    for image, g in sorted(meta.items()):
        where = f"{meta_path} record {image!r}"
        try:
            gt = g["ground_truth"][0] if isinstance(g["ground_truth"], list) else g["ground_truth"]
            fixations = g["fixations"]
            target_name = str(g["target"])
        except (KeyError, TypeError, IndexError) as e:
            raise DataError(f"{where}: missing or malformed field ({e!r}); needs fixations, "
                            "ground_truth, target") from e
        img_path, mask_path = root / "images" / image, root / "binarymask" / f"14x6-{image}"
        for p in (img_path, mask_path):
            if not p.exists():
                raise FileNotFoundError(f"{where}: {p} not found")
        img = np.asarray(Image.open(img_path).convert("RGB"))
        boxes = mask_boxes(np.asarray(Image.open(mask_path).convert("L")))
        if len(boxes) != n_objects:
            raise DataError(f"{mask_path}: {len(boxes)} boxes found, expected {n_objects}")
        crops = np.stack([np.asarray(Image.fromarray(img[y1:y2, x1:x2]).resize(
            (crop_w, crop_h), Image.BILINEAR)) for x1, y1, x2, y2 in boxes])
        ious = [_iou(gt, b) for b in boxes]
        if max(ious) <= 0:
            raise DataError(f"{where}: ground_truth box {gt} overlaps no cover box")
        target = int(np.argmax(ious))
        for sub, fix in sorted(fixations.items()):
            xy = np.asarray(fix, np.float64)
            if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
                raise DataError(f"{where} subject {sub!r}: fixations must be a non-empty list "
                                f"of [x, y], got shape {xy.shape}")
            records.append({
                "crops": crops, "target": np.int32(target),
                "scanpath": fixations_to_boxes(xy, boxes), "fix_xy": xy.astype(np.float32),
                "layout_id": image.rsplit(".", 1)[0], "sub_id": str(sub),
                "tgt_id": target_name[7:8]})  # the official gaze['target'][7]
    records = length_filter(records)
    for i, r in enumerate(records):
        r["uid"] = np.int32(i)
    return records


class OatConfig(tfds.core.BuilderConfig):
    """Crop size (and for the shelf data the category and split file)."""

    def __init__(self, *, crop_h: int = 150, crop_w: int = 93, category: str = "amazon",
                 split_file: str = "", **kw):
        super().__init__(**kw)
        self.crop_h, self.crop_w, self.category, self.split_file = (
            crop_h, crop_w, category, split_file)


class OatAmazon(tfds.core.GeneratorBasedBuilder):
    """Amazon book covers (Sattar et al.; OAT's repackaging), 6 × 14 covers per collage."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the authors' amazon_data/ folder (amazon_data.json, images/, binarymask/) from "
        "their Google Drive (README of HKUST-NISL/oat_eccv24) in the manual dir; optionally "
        "splitlist_all_amazon.txt (the paper's permutation).")
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [OatConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(builder=self, description="OAT Amazon book-cover search",
                                     features=_features(84, c.crop_h, c.crop_w))

    def _split_generators(self, dl_manager):
        manual = pathlib.Path(dl_manager.manual_dir)
        c = self.builder_config
        records = amazon_records(manual, c.crop_h, c.crop_w)
        order = _read_order(manual / "splitlist_all_amazon.txt", len(records))
        return {k: self._generate_examples(v) for k, v in _splits(records, order).items()}

    def _generate_examples(self, records):
        for r in records:
            check_trial(r, 84, f"amazon record {int(r['uid'])} ({r['layout_id']}, subject "
                               f"{r['sub_id']})")
            yield int(r["uid"]), r


# ---------------------------------------------------------------------------------------------
# the authors' shelf data


class _NumpyOnly(pickle.Unpickler):
    """Unpickles lists, dicts, strings, numbers and numpy arrays, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "dict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: pathlib.Path) -> list[dict]:
    """The processed shelf pickle (numpy arrays and builtins only)."""
    try:
        with open(path, "rb") as f:
            data = _NumpyOnly(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a readable dataset pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of trial dicts, got {type(data).__name__}")
    return data


def shelf_records(path: pathlib.Path, category: str, crop_h: int = 150, crop_w: int = 93
                  ) -> tuple[list[dict], list[int]]:
    """``(trials of the category, their indices in the pickle)``."""
    rows, cols = GRIDS[category][0]
    n = rows * cols
    qid = SHELF_IDS[category]
    data = read_pickle(path)
    out, where_idx = [], []
    for i, r in enumerate(data):
        where = f"{path} record {i}"
        if not isinstance(r, dict) or "id" not in r:
            raise DataError(f"{where}: not a trial dict with an 'id'")
        if r["id"] != qid:
            continue
        try:
            target = int(np.ravel(r["package_target"])[0]) - 1
            seq = np.asarray(r["package_seq"], np.int64) - 1
            xy = np.stack([np.asarray(r["X"], np.float64), np.asarray(r["Y"], np.float64)], -1)
            crops = np.asarray(r["question_img_feature"], np.float32)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise DataError(f"{where}: missing or malformed field ({e!r})") from e
        name = f"{where} (layout {r.get('layout_id')}, subject {r.get('sub_id')})"
        if crops.shape[1:3] != (crop_h, crop_w):
            raise DataError(f"{name}: crops are {crops.shape[1:3]}, expected ({crop_h}, {crop_w})")
        trial = {"crops": np.clip(np.round(crops * 255), 0, 255).astype(np.uint8),
                 "target": np.int32(target), "scanpath": seq.astype(np.int32),
                 "fix_xy": xy.astype(np.float32), "uid": np.int32(i),
                 "layout_id": str(r.get("layout_id", "")), "sub_id": str(r.get("sub_id", "")),
                 "tgt_id": str(r.get("tgt_id", ""))}
        check_trial(trial, n, name)
        out.append(trial)
        where_idx.append(i)
    if not out:
        raise DataError(f"{path}: no records with id {qid!r} ({category})")
    return out, where_idx


class OatShelf(tfds.core.GeneratorBasedBuilder):
    """The authors' shelf data (wine Q1 2 × 11, yogurt Q3 3 × 9, shampoo Q2 3 × 9)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the processed pickle dataset_Q123_mousedel_time_new (written by the official "
        "src/preprocess/img_feature.py) in the manual dir; optionally the split index file.")
    code_path = epath.Path(__file__)
    PICKLE = "dataset_Q123_mousedel_time_new"
    BUILDER_CONFIGS = [OatConfig(name=c, category=c) for c in ("wine", "yogurt", "shampoo")]

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        rows, cols = GRIDS[c.category][0]
        return tfds.core.DatasetInfo(builder=self, description=f"OAT shelf search ({c.category})",
                                     features=_features(rows * cols, c.crop_h, c.crop_w))

    def _split_generators(self, dl_manager):
        manual = pathlib.Path(dl_manager.manual_dir)
        c = self.builder_config
        path = manual / self.PICKLE
        if not path.exists():
            raise FileNotFoundError(f"{manual}: no {self.PICKLE} (the processed pickle of the "
                                    "official img_feature.py)")
        data_len = len(read_pickle(path))
        order = _read_order(manual / c.split_file, data_len) if c.split_file else None
        records, idx = shelf_records(path, c.category, c.crop_h, c.crop_w)
        # the official split: permute the whole pickle, then this category's records in order
        perm = np.random.default_rng(0).permutation(data_len) if order is None else order
        pos = {int(j): k for k, j in enumerate(perm)}
        ranked = sorted(range(len(records)), key=lambda k: pos[idx[k]])
        ordered = [records[k] for k in ranked]
        return {k: self._generate_examples(v)
                for k, v in _splits(ordered, np.arange(len(ordered))).items()}

    def _generate_examples(self, records):
        for r in records:
            yield int(r["uid"]), r


# ---------------------------------------------------------------------------------------------


def prepare(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike,
            config: OatConfig | None = None) -> tfds.core.GeneratorBasedBuilder:
    """Prepare ``amazon`` or a shelf category as ArrayRecord under ``data_dir`` (once)."""
    kw = {"data_dir": str(data_dir), "file_format": "array_record"}
    if name == "amazon":
        builder = OatAmazon(config=config or "default", **kw)
    elif name in SHELF_IDS:
        builder = OatShelf(config=config or name, **kw)
    else:
        raise DataError(f"unknown dataset {name!r}; known: amazon, {', '.join(SHELF_IDS)}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return builder


def read_split(builder: tfds.core.GeneratorBasedBuilder, split_name: str) -> list[dict]:
    """A prepared split as trial dicts (no TensorFlow: ``tfds.data_source``)."""
    src = builder.as_data_source(split=split_name)
    out = []
    for i in range(len(src)):
        ex = dict(src[i])
        for k in ("layout_id", "sub_id", "tgt_id"):
            if isinstance(ex.get(k), bytes):
                ex[k] = ex[k].decode()
        out.append(ex)
    return out


def load_splits(name: str, manual_dir: str, tfds_dir: str | None = None
                ) -> tuple[dict[str, list[dict]], Geometry]:
    """``({"train", "validation", "test"}, geometry)`` of a real dataset (prepared on first use
    under ``tfds_dir``, default ``<manual_dir>/tfds``)."""
    if not manual_dir:
        raise FileNotFoundError(f"dataset {name!r} needs data_dir=<folder with the authors' files>"
                                " (see projects/oat/README.md)")
    manual = pathlib.Path(manual_dir).expanduser()
    if not manual.is_dir():
        raise FileNotFoundError(f"data_dir {manual} is not a folder")
    builder = prepare(name, manual, tfds_dir or manual / "tfds")
    return {s: read_split(builder, s) for s in ("train", "validation", "test")}, geometry(name)

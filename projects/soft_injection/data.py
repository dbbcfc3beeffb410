"""The function-vector ICL tasks (spec §7): reading, checking and splitting.

A task file is one JSON array of ``{"input": str, "output": str}`` records, under
``$HEADLAB_DATA/icl_tasks/{abstractive,extractive}/<task>.json``. Splits follow the function-vector
code that the official soft-injection repository copied: 30% held out (rounded up), the rest is
train; the held-out part gives 30% (rounded up) to validation and the rest to test, which makes
the 70/9/21 sizes of the spec's table (country-capital 137/18/42). The permutation is drawn
from ``split_seed`` (NumPy), so the splits are fixed by that seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np

from common.data.errors import DataError

KINDS = ("abstractive", "extractive")


class TaskDataError(DataError):
    """A task file that is missing, unreadable, malformed, or too small to split."""


Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Task:
    """One task's splits: lists of ``(input, output)`` string pairs."""

    name: str
    kind: str
    path: pathlib.Path
    train: tuple[Pair, ...]
    valid: tuple[Pair, ...]
    test: tuple[Pair, ...]


def data_dir() -> pathlib.Path:
    """``$HEADLAB_DATA`` (default ``../shared/data``)."""
    return pathlib.Path(os.environ.get("HEADLAB_DATA", "../shared/data"))


def task_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    return (pathlib.Path(root) if root else data_dir()) / "icl_tasks"


def available_tasks(root: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
    """``{task name: file}`` of every task file under ``icl_tasks/`` (sorted by name)."""
    base = task_root(root)
    found = {p.stem: p for kind in KINDS for p in sorted((base / kind).glob("*.json"))}
    return dict(sorted(found.items()))


def task_path(name: str, root: str | os.PathLike | None = None) -> pathlib.Path:
    """The file of task ``name``; :class:`TaskDataError` naming the folder if absent."""
    base = task_root(root)
    for kind in KINDS:
        p = base / kind / f"{name}.json"
        if p.is_file():
            return p
    known = list(available_tasks(root))
    hint = (f"known tasks: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}" if known
            else "the folder holds no task files; set HEADLAB_DATA to the shared data folder")
    raise TaskDataError(f"{base}/{{abstractive,extractive}}/{name}.json: no such task file ({hint})")


def load_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read and check a task file: a non-empty JSON array of records with string-castable
    ``input`` and ``output`` (cast with ``str``, as the official code does)."""
    path = pathlib.Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskDataError(f"{path}: no such task file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaskDataError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(records, list):
        raise TaskDataError(f"{path}: expected a JSON array of {{\"input\", \"output\"}} records, "
                            f"got {type(records).__name__}")
    if not records:
        raise TaskDataError(f"{path}: the task file holds no records")
    pairs = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TaskDataError(f"{path}: record {i} is {type(r).__name__}, expected an object "
                                "with 'input' and 'output'")
        missing = [k for k in ("input", "output") if k not in r or r[k] is None]
        if missing:
            raise TaskDataError(f"{path}: record {i} has no {' or '.join(repr(k) for k in missing)}"
                                f" field (keys: {sorted(r)})")
        inp, out = str(r["input"]), str(r["output"])
        if not out.strip():
            raise TaskDataError(f"{path}: record {i} has an empty 'output'")
        pairs.append((inp, out))
    return pairs


def split_sizes(n: int) -> tuple[int, int, int]:
    """``(train, valid, test)`` sizes of ``n`` records (module docstring)."""
    held = math.ceil(0.3 * n)
    valid = math.ceil(0.3 * held)
    return n - held, valid, held - valid


def split_pairs(pairs: list[Pair], split_seed: int, where: str = "task") -> tuple[list, list, list]:
    """Shuffle with ``split_seed`` and cut into train / valid / test; every split non-empty."""
    sizes = split_sizes(len(pairs))
    if min(sizes) < 1:
        raise TaskDataError(f"{where}: {len(pairs)} records give an empty split (train/valid/test "
                            f"= {sizes[0]}/{sizes[1]}/{sizes[2]}); a task needs at least 4 records")
    order = np.random.default_rng(split_seed).permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    a, b = sizes[0], sizes[0] + sizes[1]
    return shuffled[:a], shuffled[a:b], shuffled[b:]


def load_task(name: str, *, split_seed: int = 32, root: str | os.PathLike | None = None,
              min_train: int = 1) -> Task:
    """Read, check and split task ``name``.

    ``min_train``: the fewest training records the caller needs (10-shot prompts need 11
    distinct ones); fewer is a :class:`TaskDataError` naming the file.
    """
    path = task_path(name, root)
    pairs = load_pairs(path)
    train, valid, test = split_pairs(pairs, split_seed, str(path))
    if len(train) < min_train:
        raise TaskDataError(f"{path}: the train split has {len(train)} records, the run needs "
                            f"{min_train} (shots + 1)")
    return Task(name, path.parent.name, path, tuple(train), tuple(valid), tuple(test))

"""Run directories: atomic JSON/text writes, metrics JSONL, the layout every project shares.

A run directory holds ``config.json``, ``metrics.jsonl``, ``summary.json``, ``figures/``,
``report.md`` and, where the run trains, ``checkpoints/``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / jax scalars and arrays to plain Python for JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy/jax values converted)."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


class MetricsWriter:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed at each write."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, **metrics: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(to_jsonable({"step": int(step), **metrics})) + "\n")


class RunDir:
    """Paths of one run directory; creates ``figures/`` on demand."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def figures(self) -> pathlib.Path:
        p = self.root / "figures"
        p.mkdir(exist_ok=True)
        return p

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> MetricsWriter:
        return MetricsWriter(self.root / "metrics.jsonl")

    def write_summary(self, summary: dict) -> None:
        write_json(self.root / "summary.json", summary)

    def write_report(self, markdown: str) -> None:
        atomic_write_text(self.root / "report.md", markdown)

    def write_config(self, config: Any) -> None:
        cfg = config.to_dict() if hasattr(config, "to_dict") else config
        write_json(self.root / "config.json", cfg)

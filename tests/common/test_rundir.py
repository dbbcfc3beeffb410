"""Run-directory writes are atomic and JSON-safe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.rundir import MetricsWriter, atomic_write_text, write_json


def test_write_json_converts_numpy_and_nonfinite(tmp_path):
    write_json(tmp_path / "s.json", {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None}


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "report.md"
    atomic_write_text(p, "old")

    with pytest.raises(TypeError):
        atomic_write_text(p, object())  # write() fails mid-way
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["report.md"]  # no temp file left behind


def test_metrics_jsonl_appends(tmp_path):
    m = MetricsWriter(tmp_path / "metrics.jsonl")
    m.write(1, loss=np.float64(0.5))
    m.write(2, loss=0.25)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]

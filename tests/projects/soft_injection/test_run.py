"""``run()`` end to end on a tiny random model and fixture task files: every artefact of the
run directory, and bad input stopping the run before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from projects.soft_injection import data, run
from projects.soft_injection.configs.default import get_config
from tests.projects.soft_injection.fixtures import CharTokenizer, tiny_model, write_task, write_tasks


def _config(tasks):
    c = get_config("quick")
    c.tasks = tuple(tasks)
    c.seeds = (0, 1)
    c.n_prompts, c.n_shots, c.shots = 4, 3, (1, 3)
    c.steps, c.val_every, c.val_items = 4, 2, 4
    c.test_items, c.batch_size, c.transfer_items, c.baseline_top_k = 5, 4, 4, 2
    return c


def test_run_writes_summary_report_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    names = write_tasks(tmp_path / "data")
    out = tmp_path / "run"
    summary = run.run(_config(names), out, loaded=(tiny_model(), CharTokenizer()))
    keys = run.settings(_config(names))
    assert set(summary["tasks"]) == set(names)
    for t in names:
        for k in keys:
            assert 0.0 <= summary["tasks"][t][k] <= 1.0
    assert set(summary["mean"]) == set(keys)
    for k in keys:
        assert summary["mean"][k] == pytest.approx(np.mean([summary["tasks"][t][k]
                                                            for t in names]))
    mt = summary["memory_and_time"]
    assert mt["tokens_icl_3"] > mt["tokens_zero_shot"] and mt["kv_bytes_icl_3"] > mt[
        "kv_bytes_soft_injection"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mean"] == pytest.approx(summary["mean"])
    report = (out / "report.md").read_text()
    assert report.startswith("# Soft injection") and "| soft injection |" in report
    for f in ("alpha_heatmaps", "accuracy", "selection_similarity", "training"):
        assert (out / "figures" / f"{f}.png").is_file()
    assert not summary.get("figure_problems")
    alphas = np.load(out / "alphas.npz")
    assert alphas["first_letter/seed1"].shape == (2, 4)
    assert len(run.headline(summary)) >= 3


def test_bad_task_file_stops_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    write_tasks(tmp_path / "data")
    write_task(tmp_path / "data", "broken", [{"input": "a"}] * 20)
    out = tmp_path / "run"
    with pytest.raises(data.TaskDataError, match=r"broken\.json: record 0 has no 'output'"):
        run.run(_config(["first_letter", "broken"]), out, loaded=(None, None))
    assert not out.exists()
    with pytest.raises(data.TaskDataError, match="no such task file"):
        run.run(_config(["absent"]), out, loaded=(None, None))
    assert not out.exists()


def test_cli_bad_task_file_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from common.cli import main

    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    write_task(tmp_path / "data", "empty_split", [{"input": "a", "output": "b"}] * 3)
    out = tmp_path / "run"
    rc = main(["run", "soft_injection", "--quick", "--workdir", str(out),
               "--set", "tasks=('empty_split',)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("headlab: error:") and "empty_split.json" in err[-1]
    assert "empty split" in err[-1]

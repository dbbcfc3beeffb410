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
    c.fv_heads, c.fv_aie_prompts, c.max_new_tokens = 3, 2, 4
    c.steps, c.val_every, c.val_items = 4, 2, 4
    c.test_items, c.batch_size, c.transfer_items = 5, 4, 4
    return c


def test_run_writes_summary_report_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    names = write_tasks(tmp_path / "data")
    out = tmp_path / "run"
    summary = run.run(_config(names), out, loaded=(tiny_model(), CharTokenizer()))
    keys = run.settings(_config(names))
    assert set(summary["tasks"]) == set(names)
    assert summary["metric"] == "exact_match" and {"function_vector", "task_vector",
                                                    "si_task_agnostic", "si_m1"} <= set(keys)
    for t in names:
        for k in keys:
            assert 0.0 <= summary["tasks"][t][k] <= 1.0
            assert 0.0 <= summary["first_token"][t][k] <= 1.0
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
    assert "## The five settings per task (exact match)" in report
    for t in names:
        assert f"| {t} |" in report
    for f in ("alpha_heatmaps", "accuracy", "selection_similarity", "training"):
        assert (out / "figures" / f"{f}.png").is_file()
    assert not summary.get("figure_problems")
    # a run over every shipped task: the five-settings tables have one row per task
    from projects.soft_injection import report as report_mod

    many = {f"task{i:02d}": summary["tasks"][names[i % 2]] for i in range(56)}
    big = dict(summary, tasks=many, first_token={t: summary["first_token"][names[0]]
                                                 for t in many})
    text = report_mod.render(big, _config(names))
    five = text.split("## The five settings per task (exact match)")[1].split("##")[0]
    rows = [r for r in five.splitlines() if r.startswith("| task")]
    assert len(rows) == 57 and "| **mean of 56** |" in five  # header + 56 tasks
    assert all(label in five for label in ("0-shot", "ICL 1-shot", "ICL 3-shot",
                                           "soft injection"))
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


@pytest.mark.slow
def test_a_killed_run_rerun_in_its_folder_continues_and_matches(tmp_path, monkeypatch):
    """``headlab run`` killed during the selection training: the rerun in the same run
    directory resumes from the checkpoint and writes the uninterrupted run's numbers."""
    from common.rundir import RunDir
    from tests.projects.soft_injection.test_resume_agnostic import CrashAt, Killed

    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    names = write_tasks(tmp_path / "data")
    c = _config(names)
    c.steps, c.val_every = 8, 2
    loaded = (tiny_model(), CharTokenizer())
    full = run.run(c, tmp_path / "full", loaded=loaded)
    assert full["train_resumed_from"] == 0
    with monkeypatch.context() as m:
        m.setattr(RunDir, "metrics", property(lambda self: CrashAt(
            self.root / "metrics.jsonl", 6)))
        with pytest.raises(Killed):
            run.run(c, tmp_path / "b", loaded=loaded)
    assert not (tmp_path / "b" / "summary.json").exists()
    again = run.run(c, tmp_path / "b", loaded=loaded)
    assert 0 < again["train_resumed_from"] < c.steps
    for key in ("mean", "mean_first_token", "tasks"):
        assert again[key] == full[key]
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "alphas.npz")["first_letter/seed1"],
                                  np.load(tmp_path / "full" / "alphas.npz")["first_letter/seed1"])


@pytest.mark.slow
def test_the_all_config_settings_run_and_report(tmp_path, monkeypatch):
    """The 'all' config's choices (task-agnostic only, no controls, no transfer, one
    corrupted prompt per task) on the tiny model: the run and its report complete."""
    from projects.soft_injection.configs.default import get_config

    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    names = write_tasks(tmp_path / "data")
    c, a = _config(names), get_config("all")
    for k in ("ablations", "controls", "transfer", "fv_aie_prompts", "skip_invalid_tasks"):
        c[k] = a[k]
    c.tasks = ()
    summary = run.run(c, tmp_path / "run", loaded=(tiny_model(), CharTokenizer()))
    assert summary["settings"] == ["zero_shot", "icl_1", "icl_3", "soft_injection",
                                   "function_vector", "task_vector", "si_task_agnostic"]
    assert "transfer" not in summary and set(summary["tasks"]) == set(names)
    assert "## The five settings per task" in (tmp_path / "run" / "report.md").read_text()

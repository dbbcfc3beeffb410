"""A tiny end-to-end run writing the whole run directory (every figure passes the layout checks:
a LayoutWarning is an error here), resuming from its checkpoint, and the CLI's one-line errors
on bad real-data input."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from common.cli import main as cli_main
from common.plotting import LayoutWarning
from projects.oat import run
from projects.oat.configs.default import get_config


def tiny_config():
    c = get_config("quick")
    s = c.synthetic
    s.rows, s.cols, s.crop_h, s.crop_w, s.n_trials, s.max_len = 3, 4, 10, 8, 80, 8
    m = c.model
    m.d_app, m.d_pe, m.d_ff, m.heads, m.enc_layers, m.dec_layers = 16, 16, 32, 2, 1, 1
    m.channels = (4, 4)
    c.pe.rows = 4
    c.train.steps, c.train.log_every, c.train.ckpt_every, c.train.eval_every = 12, 4, 6, 6
    c.eval.samples, c.eval.mm_samples, c.eval.figure_trials = 3, 2, 2
    return c


def test_tiny_run_writes_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_QUIET", "1")
    c = tiny_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        s = run.run(c, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.jsonl", "summary.json", "report.md", "figures", "checkpoints",
            "best_params.npz"} <= files
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["metrics"]) == set(run.METHODS)
    for v in on_disk["metrics"].values():  # the summary layout
        assert {"behavioural_error", "sequence_score", "edit_distance", "multimatch", "sim",
                "nss"} <= set(v)
        assert set(v["multimatch"]) == {"vector", "direction", "length", "position", "mean"}
        assert 0.0 <= v["sequence_score"] <= 1.0 and 0.0 <= v["sim"] <= 1.0
    assert on_disk["n_test"] == 8 and on_disk["samples"] == 3
    assert on_disk["pe"]["rms"] < 0.01
    for name in ("scanpaths", "metrics", "behaviour", "positional_encoding", "training"):
        assert (tmp_path / "figures" / f"{name}.png").exists(), name
        assert (tmp_path / "figures" / f"{name}.pdf").exists(), name
    text = (tmp_path / "report.md").read_text()
    assert "Gaps and deviations" in text and "claims hold" in text and "| OAT (sampled) |" in text
    lines = run.headline(on_disk)
    assert lines[0].startswith("synthetic test set (8 trials, 3 samples each): behavioural Δ OAT")
    assert len(lines) <= 8 and any("claims hold" in line for line in lines)
    assert s["steps"] == 12


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """The same command on the same directory continues from the last checkpoint."""
    monkeypatch.setenv("HEADLAB_QUIET", "1")
    c = tiny_config()
    s = run.run(c, tmp_path)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == ["12", "6"]
    shutil.rmtree(tmp_path / "checkpoints" / "12")
    c.train.steps = 12
    s2 = run.run(c, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resumed" and r["step"] == 6 for r in rows)
    losses = [r["loss"] for r in rows if "loss" in r and r["step"] == 12]
    assert len(losses) == 2 and losses[0] == losses[1]  # bit for bit as the first run
    assert s2["metrics"]["oat"]["sequence_score"] == pytest.approx(
        s["metrics"]["oat"]["sequence_score"])


def test_cli_bad_real_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HEADLAB_QUIET", "1")
    rc = cli_main(["run", "oat", "--config", f":amazon,data_dir={tmp_path / 'nowhere'}",
                   "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("headlab: error: data_dir") and "not a folder" in err[-1]
    manual = tmp_path / "manual"
    (manual / "amazon_data").mkdir(parents=True)
    (manual / "amazon_data" / "amazon_data.json").write_text('{"img0.png": {"fixations": ')
    rc = cli_main(["run", "oat", "--config", f":amazon,data_dir={manual}",
                   "--workdir", str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "amazon_data.json: not valid JSON" in err[-1]
    assert err[-1].startswith("headlab: error:")


def test_config_arguments():
    assert get_config("amazon").dataset == "amazon" and get_config("amazon").pe.rows == 14
    q = get_config("yogurt+quick")
    assert q.dataset == "yogurt" and q.pe.rows == 11 and q.model.pools == (5, 3)
    assert get_config().model.d_app + get_config().model.d_pe == 512
    with pytest.raises(ValueError, match="unknown argument 'bogus'"):
        get_config("bogus")


@pytest.mark.slow
def test_quick_config_end_to_end(tmp_path, monkeypatch):
    """The quick config as ``headlab run oat --quick`` runs it (minutes): the claims hold."""
    monkeypatch.setenv("HEADLAB_QUIET", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        s = run.run(get_config("quick"), tmp_path)
    assert all(c["holds"] for c in s["claims"]), s["claims"]
    assert np.isfinite(s["metrics"]["oat"]["behavioural_error"])


@pytest.mark.slow
def test_amazon_fixture_end_to_end(tmp_path, monkeypatch):
    """``--config :amazon+quick,data_dir=...`` on a fixture in the official format: prepare,
    train a few steps, score, report."""
    from tests.projects.oat.test_tfds_data import write_amazon

    monkeypatch.setenv("HEADLAB_QUIET", "1")
    manual = tmp_path / "manual"
    write_amazon(manual, n_images=5, subjects=("a", "b", "c", "d", "e", "f"))
    c = get_config("amazon+quick")
    c.data_dir = str(manual)
    c.model.d_app, c.model.d_pe, c.model.d_ff, c.model.enc_layers, c.model.dec_layers = (
        16, 16, 32, 1, 1)
    c.model.channels = (4, 4)
    c.train.steps, c.train.log_every, c.train.ckpt_every, c.train.eval_every = 4, 2, 2, 2
    c.eval.samples, c.eval.mm_samples, c.eval.figure_trials = 2, 1, 1
    s = run.run(c, tmp_path / "run")
    assert s["dataset"] == "amazon" and s["grid"] == [6, 14] and s["n_train"] == 24
    assert (tmp_path / "manual" / "tfds" / "oat_amazon").is_dir()
    assert set(s["metrics"]) == set(run.METHODS)


def test_infinite_delta_is_drawn_and_reported(tmp_path):
    """Δ is infinite when a human statistic is 0 (official nansum): figure, claims, headline."""
    from projects.oat import plots, report

    scores = {k: {"behavioural_error": float("inf") if k == "random" else 0.5,
                  "sequence_score": 0.2} for k in run.METHODS}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        plots.metric_bars(scores, tmp_path)
    assert (tmp_path / "metrics.png").exists()
    js = {k: {**v, "behavioural_error": "inf" if k == "random" else 0.5}  # as summary.json
          for k, v in scores.items()}
    cl = report.claims({"metrics": js, "pe": {"rms": 0.0, "max_abs": 0.0}})
    assert [c["holds"] for c in cl] == [False, False, True]  # ties do not beat the baselines

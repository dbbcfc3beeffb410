"""One tiny end-to-end run writing the whole run directory."""

import json

import numpy as np
import pytest

from projects.icl_regression import run
from projects.icl_regression.configs.default import get_config


def tiny_run_config():
    c = get_config("quick")
    c.d, c.length, c.batch = 3, 8, 32
    c.heads = (1, 2)
    c.steps, c.log_every, c.ckpt_every = 40, 20, 20
    c.multitask.d = 4
    c.multitask.subsets = ((0, 1, 2), (1, 2, 3))
    c.multitask.heads = (2,)
    c.eval.lengths = (4, 8, 16)
    c.eval.n_test = 400
    c.theory.flow_steps = 2000
    c.theory.heatmap_grid = 3
    c.theory.heatmap_draws = 100
    c.theory.norm_draws = 300
    c.activation.functions = ("tanh",)
    return c


def check_run_directory(tmp_path, c, figures):
    s = run.run(c, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.jsonl", "summary.json", "report.md", "figures", "checkpoints"} <= files
    ckpt = {p.name for p in (tmp_path / "checkpoints").iterdir()}  # the run resumes from here
    assert {"meta.json", str(c.steps)} <= ckpt
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["mse"]["H2"].keys() == {"4", "8", "16"}
    for k in ("H1", "H2", "gd", "debiased_gd", "bayes"):
        assert set(on_disk["mse"][k]) == {"4", "8", "16"}
    assert len(on_disk["omega"]["H2"]) == 2 and len(on_disk["mu"]["H2"]) == 2
    assert set(on_disk["kq_offdiag_ratio"]) == {"H1", "H2"}
    assert set(on_disk["gamma_offdiag_ratio"]) == {"H1", "H2"}
    assert np.shape(on_disk["patterns"]["H2"]["gamma"]) == (c.d, c.d)
    assert set(on_disk["ov_zero_sum_abs"]) == {"H1", "H2"}
    assert s["steps"] == 40
    assert set(on_disk["activation"]) == {"act_tanh_H2"}
    assert set(on_disk["mse"]["act_tanh_H2"]) == {"4", "8", "16"}
    figs = {p.name for p in (tmp_path / "figures").iterdir()}
    for name in figures:
        assert f"{name}.png" in figs and f"{name}.pdf" in figs, name
    report = (tmp_path / "report.md").read_text()
    assert "debiased_gd" in report and "Gaps and deviations" in report and "Γ's" in report
    # Exact closed forms agree with their Monte-Carlo twins in the run (400 draws: loose).
    for n in ("8", "16"):
        assert on_disk["mse"]["debiased_gd"][n] == pytest.approx(
            on_disk["mse"]["debiased_gd_exact"][n], rel=0.25)


FIGURES = ("mse_vs_length", "mse_vs_heads", "circuits_H1", "circuits_H2", "pattern_metrics",
           "dynamics", "theory", "linear_vs_softmax", "softmax_norm_histograms",
           "activation_ablation")


def test_end_to_end_run_directory(tmp_path):
    c = tiny_run_config()
    c.noniso.enabled = False
    c.multitask.enabled = False
    check_run_directory(tmp_path, c, FIGURES)


@pytest.mark.slow
def test_end_to_end_with_extensions(tmp_path):
    check_run_directory(tmp_path, tiny_run_config(),
                        FIGURES + ("noniso_preconditioned_gd", "multitask_superposition"))

"""One tiny end-to-end run writing the whole run directory; every figure passes the layout
checks (``common.plotting.layout_problems``: a LayoutWarning is an error here)."""

import json
import warnings

import numpy as np
import pytest

from common.plotting import LayoutWarning
from projects.icl_regression import report, run
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)  # any figure layout problem fails the run
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
    assert all({"L", "d", "median_times_sqrt_L"} <= set(r)
               for p in on_disk["theory"]["softmax_norms"] for r in p["series"])
    figs = {p.name for p in (tmp_path / "figures").iterdir()}
    for name in figures:
        assert f"{name}.png" in figs and f"{name}.pdf" in figs, name
    text = (tmp_path / "report.md").read_text()
    assert "debiased_gd" in text and "Gaps and deviations" in text and "Γ's" in text
    # The claims: one verdict line in the report, the same verdicts in the closing lines.
    claims = on_disk["claims"]
    assert claims == report.claims(on_disk)
    assert {c["id"] for c in claims} == set(report.THRESHOLDS)
    verdict = report.verdict_line(claims)
    assert f"**{verdict}.**" in text
    lines = run.headline(on_disk)
    assert lines[2].startswith(verdict) and len(lines) <= 8
    failing = [c for c in claims if not c["holds"]]
    for c in failing[:4]:
        assert any(line.strip().startswith(c["claim"]) and c["failing"][0] in line
                   for line in lines), c["id"]
    if len(failing) > 4:
        assert lines[-1].strip() == f"and {len(failing) - 4} more (report.md)"
    assert lines[0].startswith("test MSE at L = 8, ours (paper): H1 ")
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


@pytest.mark.slow
def test_quick_config_figures_have_no_layout_problems(tmp_path):
    """The real ``headlab run icl_regression --quick`` config (2-4 min): no LayoutWarning."""
    c = get_config("quick")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        s = run.run(c, tmp_path)
    figs = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert figs == set(FIGURES[:2]) | {f"circuits_H{h}" for h in c.heads} | set(FIGURES[4:]) | {
        "noniso_preconditioned_gd", "multitask_superposition"}
    assert s["claims"] == report.claims(s)

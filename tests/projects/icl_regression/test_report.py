"""The claims' verdicts: thresholds applied once, the same verdicts in report.md and the
closing lines of ``headlab run``; the report defines its notation."""

import copy

import pytest

from projects.icl_regression import report, run
from projects.icl_regression.configs.default import get_config


def summary(offdiag_h8=0.05, zero_sum_h2=0.01):
    """A synthetic summary of a run with H = 1, 2, 8 at L = 40 (the fields report.py reads)."""
    def pattern(omega, mu, offdiag, zero_sum, cv=0.01, last=0.9999):
        return {"omega": omega, "mu": mu, "dummy": [False] * len(omega), "n_dummy": 0,
                "kq_offdiag_ratio": offdiag, "kq_offdiag_per_head": [offdiag] * len(omega),
                "kq_offdiag_ratio_mu_weighted": offdiag, "gamma_offdiag_ratio": 0.02,
                "kq_diag_ratio": 0.999, "ov_last_ratio": last, "ov_zero_sum_abs": zero_sum,
                "ov_zero_sum_rel": zero_sum, "omega_abs_cv": cv, "sign_match": 1.0,
                "mu_pos_sum": 3.4, "eta_eff": 0.87}
    lengths = ("10", "40", "100")
    mse = {k: dict.fromkeys(lengths, v) for k, v in (
        ("H1", 0.40), ("H2", 0.240), ("H8", 0.241), ("debiased_gd", 0.238), ("gd", 0.24),
        ("bayes", 0.11), ("multihead", 0.24), ("single_head", 0.40), ("single_head_nb", 0.40),
        ("gd_exact", 0.24), ("debiased_gd_exact", 0.243), ("gd_paper_eta_exact", 0.24),
        ("debiased_gd_paper_eta_exact", 0.243))}
    return {
        "length": 40, "heads": [1, 2, 8], "mse": mse, "eta_star": 0.879, "steps": 500_000,
        "train_seconds": 1.0, "total_seconds": 2.0,
        "patterns": {"H1": pattern([0.5], [1.5], 0.02, 1.0, cv=0.0),
                     "H2": pattern([0.13, -0.13], [3.4, -3.4], 0.03, zero_sum_h2),
                     "H8": pattern([0.13, -0.13] * 4, [0.85, -0.85] * 4, offdiag_h8, 0.004)},
        "theory": {"mu_gamma_at_gamma_ref": 3.38,
                   "flow2_final": {"time": 3000.0, "omega": [0.17, -0.17], "mu": [2.6, -2.6],
                                   "eta_eff": 0.88},
                   "flow4_final": {"omega": [0.1] * 4, "mu": [1.0] * 4},
                   "heatmap_max_abs_true_minus_approx": 0.03,
                   "softmax_norms": [{"title": "s = 0.5, d = 5", "s": 0.5, "series": [
                       {"L": 40, "d": 5, "median_times_sqrt_L": 1.48},
                       {"L": 100, "d": 5, "median_times_sqrt_L": 1.58}]}]},
    }


def test_all_claims_hold_on_a_clean_run():
    cl = report.claims(summary())
    assert [c["id"] for c in cl] == list(report.THRESHOLDS)
    assert all(c["holds"] for c in cl)
    assert report.verdict_line(cl) == f"{len(cl)} of {len(cl)} claims hold"
    lines = run.headline(summary())
    assert lines[0] == ("test MSE at L = 40, ours (paper): H1 0.400 (0.406), H2 0.240 (0.241), "
                        "H8 0.241 (0.236)")
    assert lines[2] == f"{len(cl)} of {len(cl)} claims hold."


@pytest.mark.parametrize("offdiag,holds", [(0.0999, True), (0.10, False), (0.198, False)])
def test_the_threshold_decides_and_the_failing_value_is_named(offdiag, holds):
    s = summary(offdiag_h8=offdiag)
    kq = next(c for c in report.claims(s) if c["id"] == "kq_offdiag_ratio")
    assert kq["holds"] is holds
    lines = run.headline(s)
    text = report.render(s, get_config(), s["heads"])
    n = len(report.THRESHOLDS)
    if holds:
        assert lines[2] == f"{n} of {n} claims hold."
        assert f"**{n} of {n} claims hold.**" in text
    else:
        assert kq["failing"] == [f"H8 {offdiag:.3f}"]
        assert lines[2] == f"{n - 1} of {n} claims hold; failing:"
        assert lines[3] == (f"  diagonal KQ (KQ_h[:d, :d] ≈ ω_h·I): H8 {offdiag:.3f} "
                            "(needs < 0.1)")
        assert f"**{n - 1} of {n} claims hold.** Failing: diagonal KQ" in text
        assert f"| fails: H8 {offdiag:.3f} |" in text


def test_two_failing_claims_and_the_relative_mse_claim():
    s = summary(offdiag_h8=0.2, zero_sum_h2=0.06)
    s["mse"]["H8"]["40"] = 0.238 * 1.06  # 6% above debiased GD
    cl = report.claims(s)
    failing = report.failing_lines(cl)
    assert report.verdict_line(cl) == f"{len(cl) - 3} of {len(cl)} claims hold"
    assert failing[0] == ("trained multi-head attention ≈ debiased GD: H8 6.0% (needs < 5%)")
    assert failing[1].endswith("H8 0.200 (needs < 0.1)")
    assert failing[2] == "zero-sum OV (Σ_h μ_h ≈ 0): H2 0.060 (needs < 0.05)"
    assert run.headline(s)[3:] == [f"  {f}" for f in failing]


def test_verdicts_are_recomputed_not_read_back():
    s = summary(offdiag_h8=0.2)
    stale = copy.deepcopy(s)
    stale["claims"] = report.claims(summary())  # verdicts of another run, stored by mistake
    assert run.headline(stale) == run.headline(s)
    assert report.render(stale, get_config(), [1, 2, 8]) == report.render(s, get_config(),
                                                                          [1, 2, 8])


def test_report_defines_its_notation_and_sources():
    text = report.render(summary(), get_config(), [1, 2, 8])
    first = text.split("\n\n")[1]
    assert first.startswith("This run trains one-layer softmax-attention transformers")
    for term in ("**ω_h**", "**μ_h**", "**Σ₊μ**", "**η\\***", "**L̃(ω, μ)**", "*The blog*",
                 "*Paper* numbers", "*The spec*", "XintianPan/ICL_linear"):
        assert term in text, term
    assert "(L=40, d=5) 1.48, (L=100, d=5) 1.58" in text
    assert "L=40, d=5 1.48" not in text  # the old garbled label

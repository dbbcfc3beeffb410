"""The paper's numbers (He et al. 2025; §5-§8 of the spec), in one place for run.py and report.py.

Notebook outputs; the trained models' MSEs have the notebook's +0.1 offset removed.
"""

PAPER = {
    "mse": {
        "H1": {"10": 0.847, "40": 0.406, "100": 0.281},
        "H2": {"10": 0.579, "40": 0.241, "100": 0.168},
        "H4": {"10": 0.573, "40": 0.245, "100": 0.170},
        "H8": {"10": 0.584, "40": 0.236, "100": 0.168},
        "gd": {"10": 0.643, "20": 0.371, "40": 0.241, "100": 0.162},
        "debiased_gd": {"10": 0.614, "20": 0.369, "40": 0.243, "100": 0.163},
        "bayes": {"10": 0.194, "20": 0.135, "40": 0.115, "100": 0.104},
        "multihead": {"10": 0.604, "20": 0.367, "40": 0.243, "100": 0.164},
        "single_head": {"10": 0.875, "20": 0.586, "40": 0.405, "100": 0.284},
    },
    "omega_abs": 0.13,  # limiting |ω| of the active heads
    "mu_pos_sum": 3.5,  # limiting Σ₊μ for every H ≥ 2
    "mu_trained": 3.45,  # the trained μ of the idealised multi-head estimator
    "eta_star": 0.879,  # η* = 2γμ_γ at γ = 0.13
    "kq_diag_ratio": {"H2": 0.99926, "H4": 0.99928, "H8": 0.97839},
    "kq_diag_var": {"H2": 3.3e-6, "H4": 4.4e-6, "H8": 1.3e-4},
    "ov_last_ratio": {"H2": 0.99994, "H4": 0.99997, "H8": 0.99966},
}

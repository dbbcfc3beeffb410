"""Configs of the icl_regression project (He et al. 2025).

Full run, the paper's 5·10⁵ Adam steps (CPU: 54 minutes measured on 2 cores, all 13 models
stepping together at 160-176 steps/s in one compiled program; slower when other jobs load
the CPU):

    headlab run icl_regression

Quick CPU run (about 3 minutes on 2 cores; patterns and curve ordering, not the slow drift of
|ω| towards 0.13):

    headlab run icl_regression --quick        # same as --config ...default.py:quick

Paper setup (§2-§5 of the spec): d = 5, L = 40, σ² = 0.1, x ~ N(0, I), β ~ N(0, I/d), Adam 1e-3,
batch 256, a fresh batch every step, 5·10⁵ steps, logged every 1000 (as the official notebook).
"""

from __future__ import annotations

import ml_collections

from projects.icl_regression.paper import PAPER


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``"full"`` for the full run, ``"quick"`` for the small CPU run."""
    if arg not in (None, "", "full", "quick"):
        raise ValueError(f"icl_regression get_config: unknown argument {arg!r} (use 'quick')")
    # type_safe=False: ``covariance`` may be a name ("identity", "toeplitz:0.5") or a matrix.
    c = ml_collections.ConfigDict(type_safe=False)
    # ---- task (single-task regression, §2) ----
    c.d = 5
    c.length = 40  # training prompt length L
    c.sigma2 = 0.1  # label noise variance σ²
    c.covariance = "identity"  # "identity" | "toeplitz:RHO" | [[...], ...] (PSD, d×d)
    # ---- models trained together (one compiled program, vmapped over seeds) ----
    c.heads = (1, 2, 4, 8)
    c.seeds = (0,)
    c.backend = "auto"  # attention backend: auto (the cpu path on CPU) | reference | cpu | xla
    # ---- optimisation (§5) ----
    c.batch = 256
    c.lr = 1e-3
    c.steps = 500_000
    c.log_every = 1_000
    c.ckpt_every = 10_000
    # ---- extensions (§9), trained in the same program ----
    c.noniso = ml_collections.ConfigDict(type_safe=False)
    c.noniso.enabled = True
    c.noniso.heads = 2
    c.noniso.covariance = "toeplitz:0.5"
    c.multitask = ml_collections.ConfigDict()
    c.multitask.enabled = True
    c.multitask.d = 6
    c.multitask.subsets = ((0, 1, 2, 3), (2, 3, 4, 5))  # S_1, S_2 (0-based), overlap {2, 3}
    c.multitask.heads = (1, 2, 3, 4)
    c.linear = ml_collections.ConfigDict()
    c.linear.enabled = True  # linear-attention baseline (blog §8)
    c.linear.heads = 1
    c.activation = ml_collections.ConfigDict()
    c.activation.enabled = True  # exp replaced by f and renormalised (blog §8)
    c.activation.functions = ("affine", "quadratic", "tanh")  # 1+Cx, (1+Cx)², 1+tanh(Cx)
    c.activation.heads = 2
    c.activation.c = 1.0  # C (the blog does not give it)
    # ---- evaluation ----
    c.eval = ml_collections.ConfigDict()
    c.eval.lengths = tuple(range(10, 101, 5))
    c.eval.n_test = 20_000  # Monte-Carlo prompts per length
    c.eval.seed = 1234
    # ---- theory (§8) ----
    c.theory = ml_collections.ConfigDict()
    c.theory.flow_lr = 0.01
    c.theory.flow_steps = 1_000_000  # gradient flow on L̃, H = 2 (time = steps × lr)
    c.theory.flow_h4_sigma2 = 0.01
    c.theory.gamma_ref = PAPER["omega_abs"]  # limiting |ω| (reference lines, idealised TF)
    c.theory.mu_ref = PAPER["mu_trained"]  # learned μ of the idealised multi-head TF
    c.theory.heatmap_grid = 20  # approx-vs-true loss heatmap (grid × grid cells)
    c.theory.heatmap_draws = 4_000
    c.theory.norm_draws = 10_000  # softmax-norm histograms (draws per (L, d))
    if arg == "quick":
        c.steps = 10_000
        c.log_every = 200
        c.ckpt_every = 1_000
        c.lr = 3e-3
        c.multitask.heads = (3, 4)
        c.eval.lengths = (10, 20, 40, 60, 100)
        c.eval.n_test = 8_000
        c.theory.flow_steps = 300_000
        c.theory.heatmap_grid = 10
        c.theory.heatmap_draws = 2_000
        c.theory.norm_draws = 4_000
    return c

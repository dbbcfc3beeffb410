"""Emergent patterns of the trained circuits (§6 of the spec).

Inputs are per-head circuits from :func:`projects.icl_regression.model.circuits`:
``KQ [H, D, D]`` (logit ``z_lᵀ KQ_h z_q``) and ``OV [H, N, D]``, with ``D = d + N``.

Per head ``h``:

* ``omega``: ``mean(diag(KQ_h[:d, :d]))`` (the paper's ω_h, with the model's own ``1/sqrt(D)``
  scale; the official dynamics plots divide by ``sqrt(d+2)`` instead, a factor 0.926 smaller);
* ``mu``: ``OV_h[n, d + n]`` (the y-entry of the OV row of output ``n``); ``[H]`` for ``N = 1``;
* ``diag_ratio = ‖diag(B)‖₂ / ‖B‖_F``, ``diag_var = Var(diag B) / mean(diag B)²``,
  ``offdiag_ratio = ‖B - diag(B)‖_F / ‖diag(B)‖₂`` for ``B = KQ_h[:d, :d]``;
* ``last_ratio = |μ| / ‖OV_h‖₂`` (the last-entry-only pattern);
* ``bottom_row = ‖KQ_h[d:, :d]‖ / ‖KQ_h[:d, :d]‖`` (the y-row of KQ, 0 in the paper);
* ``dummy``: the head's share ``|ω_h μ_h|`` of the effective step is under 5% of the largest.

Model level, the effective preconditioner ``Γ = Σ_h μ_h KQ_h[:d, :d]``: for small logits,
``softmax_l ≈ (1 + s_l - s̄)/L`` gives ``ŷ ≈ (Σ_h μ_h) ȳ + (1/L) Σ_l y_l (x_l - x̄)ᵀ Γ x_q``, so
once ``Σμ ≈ 0`` the prediction depends on the heads only through ``Γ`` (debiased GD has
``Γ = η* I``). Heads may trade directions among themselves (one head's off-diagonal part
cancelled by another's) without changing ``Γ``.
"""

from __future__ import annotations

import numpy as np

DUMMY_SHARE = 0.05


def head_patterns(kq: np.ndarray, ov: np.ndarray, d: int) -> dict[str, np.ndarray]:
    """Pattern quantities of every head (see module docstring). Shapes ``[H]`` unless noted.

    With ``N > 1`` outputs ``mu`` is ``[H, N]`` (``OV_h[n, d+n]``) and ``omega_coords`` ``[H, d]``.
    """
    kq = np.asarray(kq, np.float64)
    ov = np.asarray(ov, np.float64)
    if kq.ndim != 3 or kq.shape[1] != kq.shape[2] or kq.shape[1] <= d:
        raise ValueError(f"KQ must be [H, D, D] with D > d = {d}, got {kq.shape}")
    n_out = kq.shape[1] - d
    if ov.shape != (kq.shape[0], n_out, kq.shape[1]):
        raise ValueError(f"OV must be [H, {n_out}, {kq.shape[1]}], got {ov.shape}")
    block = kq[:, :d, :d]
    diag = np.diagonal(block, axis1=1, axis2=2)  # [H, d]
    diag_norm = np.linalg.norm(diag, axis=1)
    fro = np.linalg.norm(block, axis=(1, 2))
    omega = diag.mean(axis=1)
    mu_all = np.stack([ov[:, n, d + n] for n in range(n_out)], axis=1)  # [H, N]
    eps = 1e-30
    last_ratio = np.linalg.norm(mu_all, axis=1) / (np.linalg.norm(ov, axis=(1, 2)) + eps)
    share = np.abs(omega[:, None] * mu_all).sum(axis=1)
    dummy = share < DUMMY_SHARE * share.max() if share.max() > 0 else np.ones_like(share, bool)
    return {
        "omega": omega,
        "omega_coords": diag,
        "mu": mu_all[:, 0] if n_out == 1 else mu_all,
        "diag_ratio": diag_norm / (fro + eps),
        "diag_var": diag.var(axis=1) / (omega**2 + eps),
        "offdiag_ratio": offdiag_ratio(block),
        "last_ratio": last_ratio,
        "bottom_row": np.linalg.norm(kq[:, d:, :d], axis=(1, 2)) / (fro + eps),
        "dummy": dummy,
    }


def model_patterns(kq: np.ndarray, ov: np.ndarray, d: int) -> dict:
    """Model-level summary of a single-task model (``N = 1``) over its non-dummy heads.

    Returns a dict with ``omega, mu`` (lists, all heads), ``dummy`` (list of bools),
    ``kq_offdiag_ratio`` (``Σ‖offdiag‖_F / Σ‖diag‖₂`` over active heads), its per-head values
    ``kq_offdiag_per_head`` and ``kq_offdiag_ratio_mu_weighted`` (heads weighted by ``|μ_h|``,
    their share of the prediction; a diagnostic, not the paper's metric), ``kq_diag_ratio``,
    ``kq_diag_var``, ``ov_last_ratio`` (means over active heads), ``ov_zero_sum_abs = |Σ_h μ_h|``,
    ``ov_zero_sum_rel = |Σμ| / Σ|μ|``, ``omega_abs_cv = std|ω| / mean|ω|`` over active heads,
    ``gamma`` (``Γ [d, d]``, see the module docstring) and ``gamma_offdiag_ratio``
    (``‖Γ - diag Γ‖_F / ‖diag Γ‖₂``, the function-level counterpart of ``kq_offdiag_ratio``),
    ``sign_match`` (fraction of active heads with sign ω = sign μ), ``mu_pos_sum`` (``Σ_{H₊} μ``),
    ``eta_eff = Σ_h ω_h μ_h`` (the debiased-GD step the heads implement at small ω: ``2γμ_γ``
    for the symmetric pair ``(γ, -γ), (μ_γ, -μ_γ)``).
    """
    p = head_patterns(kq, ov, d)
    if np.ndim(p["mu"]) != 1:
        raise ValueError("model_patterns is for single-task models (N = 1)")
    active = ~p["dummy"]
    omega, mu = p["omega"], p["mu"]
    kq_block = np.asarray(kq, np.float64)[:, :d, :d]
    diag_norm = np.linalg.norm(np.diagonal(kq_block, axis1=1, axis2=2), axis=1)
    off = p["offdiag_ratio"] * diag_norm
    abs_w = np.abs(omega[active])
    gamma = effective_preconditioner(kq, mu, d)
    return {
        "omega": omega.tolist(),
        "mu": mu.tolist(),
        "dummy": p["dummy"].tolist(),
        "n_dummy": int(p["dummy"].sum()),
        "kq_offdiag_ratio": float(off[active].sum() / diag_norm[active].sum()),
        "kq_offdiag_per_head": p["offdiag_ratio"].tolist(),
        "kq_offdiag_ratio_mu_weighted": float(
            (np.abs(mu) * off)[active].sum() / (np.abs(mu) * diag_norm)[active].sum()),
        "gamma": gamma.tolist(),
        "gamma_offdiag_ratio": float(offdiag_ratio(gamma)),
        "kq_diag_ratio": float(p["diag_ratio"][active].mean()),
        "kq_diag_var": float(p["diag_var"][active].mean()),
        "kq_bottom_row": float(p["bottom_row"][active].mean()),
        "ov_last_ratio": float(p["last_ratio"][active].mean()),
        "ov_zero_sum_abs": float(abs(mu.sum())),
        "ov_zero_sum_rel": float(abs(mu.sum()) / np.abs(mu).sum()),
        "omega_abs_cv": float(abs_w.std() / abs_w.mean()),
        "sign_match": float(np.mean(np.sign(omega[active]) == np.sign(mu[active]))),
        "mu_pos_sum": float(mu[active & (omega > 0)].sum()),
        "mu_neg_sum": float(mu[active & (omega < 0)].sum()),
        "n_pos": int((active & (omega > 0)).sum()),
        "n_neg": int((active & (omega < 0)).sum()),
        "eta_eff": float(np.sum(omega * mu)),
    }


def effective_preconditioner(kq: np.ndarray, mu: np.ndarray, d: int) -> np.ndarray:
    """``Γ = Σ_h μ_h KQ_h[:d, :d]`` ``[d, d]`` from ``KQ [H, D, D]`` and ``μ [H]``."""
    return np.einsum("h,hij->ij", np.asarray(mu, np.float64),
                     np.asarray(kq, np.float64)[:, :d, :d])


def offdiag_ratio(m: np.ndarray) -> np.ndarray:
    """``‖M - diag M‖_F / ‖diag M‖₂`` of square matrices ``[..., d, d]`` -> ``[...]``."""
    m = np.asarray(m, np.float64)
    diag_norm = np.linalg.norm(np.diagonal(m, axis1=-2, axis2=-1), axis=-1)
    fro = np.linalg.norm(m, axis=(-2, -1))
    return np.sqrt(np.maximum(fro**2 - diag_norm**2, 0.0)) / (diag_norm + 1e-30)


def preconditioner(kq: np.ndarray, omega: np.ndarray, d: int, active: np.ndarray) -> np.ndarray:
    """Sign-aligned mean ``KQ[:d, :d]`` over active heads (the learned ``γ·Ω``, non-isotropic)."""
    signs = np.sign(omega)[active]
    return np.mean(np.asarray(kq)[active, :d, :d] * signs[:, None, None], axis=0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two matrices viewed as vectors."""
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

"""Test MSE of the trained models and the closed-form predictors on shared Monte-Carlo prompts.

One compiled function per prompt length evaluates every trained model of a prompt family (same
``d``, covariance and tasks) and every estimator on the same prompts (common random numbers), so
the curves are compared without extra Monte-Carlo noise between them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from projects.icl_regression import data, estimators, model
from projects.icl_regression.spec import Bucket


def evaluate_family(buckets: list[Bucket], params: dict, predictors: dict, *, length: int,
                    n: int, sigma2: float, key: jax.Array, backend: str = "reference",
                    chunk: int = 2000) -> dict[str, dict]:
    """MSE at one prompt length of the buckets' models and of ``predictors``.

    Args:
      buckets: buckets sharing ``d``, covariance and tasks (the prompt family).
      params: bucket name -> stacked params ``[M, ...]``.
      predictors: name -> ``(x, y [b, L, N], x_q) -> ŷ [b, N]`` on this family's prompts.
      length, n, sigma2, key: ``n`` prompts of ``length`` context tokens.

    Returns:
      ``{name: {"mse": float | [M], "se": ..., "per_task": [.., N]}}`` (lists for buckets).
    """
    b0 = buckets[0] if buckets else None
    if b0 is None:
        raise ValueError("evaluate_family needs at least one bucket")
    for b in buckets:
        if (b.d, b.cov, b.task_masks) != (b0.d, b0.cov, b0.task_masks):
            raise ValueError(f"bucket {b.name} is not in the prompt family of {b0.name}")
    cov = b0.cov_array()
    cov_sqrt = None if cov is None else jnp.asarray(data.covariance_sqrt(cov), jnp.float32)
    masks = b0.masks_array()
    masks = None if masks is None else jnp.asarray(masks)
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    fwds = {b.name: model.FORWARDS[b.attention] for b in buckets}

    @jax.jit
    def run(params, keys):
        def one(k):
            pr = data.sample_prompts(k, chunk, length, b0.d, sigma2, cov_sqrt, masks)
            out = {}
            for name, fwd in fwds.items():
                out[name] = jax.vmap(
                    lambda p, fwd=fwd: (fwd(p, pr.context, pr.query, backend=backend)
                                        - pr.y_q) ** 2)(params[name])  # [M, b, N]
            for name, f in predictors.items():
                out[name] = (f(pr.x, pr.y, pr.x_q) - pr.y_q) ** 2  # [b, N]
            return out

        return jax.lax.map(one, keys)

    sq = jax.device_get(run({b.name: params[b.name] for b in buckets},
                            jax.random.split(key, n_chunks)))
    res = {}
    for name, e in sq.items():
        e = np.asarray(e, np.float64)
        if name in fwds:  # [chunks, M, b, N]
            e = np.moveaxis(e, 1, 0).reshape(e.shape[1], -1, e.shape[-1])  # [M, n, N]
            per = e.mean(axis=1)  # [M, N]
            tot = e.mean(axis=2)  # [M, n]
            res[name] = {"mse": tot.mean(axis=1).tolist(),
                         "se": (tot.std(axis=1) / math.sqrt(tot.shape[1])).tolist(),
                         "per_task": per.tolist()}
        else:  # [chunks, b, N]
            e = e.reshape(-1, e.shape[-1])
            tot = e.mean(axis=1)
            res[name] = {"mse": float(tot.mean()), "se": float(tot.std() / math.sqrt(len(tot))),
                         "per_task": e.mean(axis=0).tolist()}
    return res


def _single(f):
    """Wrap a single-task predictor ``(x, y [b, L], x_q) -> [b]`` to ``[b, 1]`` outputs."""
    return lambda x, y, q: f(x, y[..., 0], q)[:, None]


def single_task_predictors(d: int, length: int, sigma2: float, gamma: float, mu: float,
                           train_length: int, reduced: dict[str, tuple] | None = None) -> dict:
    """The estimator set of the main experiment at prompt length ``length``.

    ``single_head`` re-tunes μ per length; ``single_head_nb`` keeps μ tuned at the training
    length (the official notebook's choice); ``reduced`` adds kernel-regressor models with
    learned per-head ``(omega, mu)`` (e.g. of our trained H2 model).
    """
    preds = {k: _single(f) for k, f in estimators.standard_predictors(
        d, length, sigma2, gamma, mu).items()}
    w1, m1 = estimators.nw_params(d, train_length, sigma2)
    preds["single_head_nb"] = _single(
        lambda x, y, q: estimators.kernel_regressors(x, y, q, [w1], [m1]))
    for name, (w, m) in (reduced or {}).items():
        preds[name] = _single(
            lambda x, y, q, w=w, m=m: estimators.kernel_regressors(x, y, q, w, m))
    return preds


def noniso_predictors(d: int, length: int, sigma2: float, cov: np.ndarray) -> dict:
    """Debiased GD with and without the ``Σ⁻¹`` preconditioner (η*), and Bayes ridge."""
    eta = estimators.eta_star(d, length, sigma2)
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    return {
        "debiased_gd": _single(lambda x, y, q: estimators.debiased_gd(x, y, q, eta)),
        "precond_debiased_gd": _single(
            lambda x, y, q: estimators.debiased_gd(x, y, q, eta, prec)),
        "bayes": _single(lambda x, y, q: estimators.ridge(x, y, q, sigma2 * d)),
    }


def multitask_predictors(masks: np.ndarray, length: int, sigma2: float) -> dict:
    """Per task ``n``: debiased GD (η* with ``d = |S_n|``) and ridge on the subset ``S_n``."""
    masks = np.asarray(masks, np.float32)

    def per_task(fn):
        def f(x, y, q):
            outs = []
            for n, m in enumerate(masks):
                idx = np.flatnonzero(m)
                outs.append(fn(x[..., idx], y[..., n], q[..., idx], len(idx)))
            return jnp.stack(outs, axis=-1)
        return f

    return {
        "debiased_gd": per_task(lambda x, y, q, k: estimators.debiased_gd(
            x, y, q, estimators.eta_star(k, length, sigma2))),
        "ridge_subset": per_task(lambda x, y, q, k: estimators.ridge(x, y, q, sigma2 * k)),
    }

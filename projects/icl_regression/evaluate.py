"""Test MSE of the trained models and the closed-form predictors on shared Monte-Carlo prompts.

One compiled function per prompt length evaluates every trained model of a prompt family (same
``d``, covariance and tasks) and every estimator on the same prompts (common random numbers), so
the curves are compared without extra Monte-Carlo noise between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from projects.icl_regression import data, estimators
from projects.icl_regression.spec import Bucket


def evaluate_family(buckets: list[Bucket], params: dict, predictor_factory: Callable,
                    *, lengths: list[int], n: int, sigma2: float, key: jax.Array,
                    backend: str = "reference", chunk: int = 2000) -> dict[int, dict]:
    """MSE over prompt lengths of the buckets' models and of the factory's predictors.

    Prompts are drawn at ``max(lengths)`` and right-padded (``kv_valid`` masks in the model,
    ``valid`` weights in the estimators), so one compiled program serves every length.

    Args:
      buckets: buckets sharing ``d``, covariance and tasks (the prompt family).
      params: bucket name -> stacked params ``[M, ...]``.
      predictor_factory: ``length (traced scalar) -> {name: (x, y [b, L, N], x_q, valid) ->
        ŷ [b, N]}`` on this family's prompts.
      lengths, n, sigma2, key: ``n`` prompts per length (key folded with the length).

    Returns:
      ``{length: {name: {"mse": float | [M], "se": ..., "per_task": [.., N] | [M][N]}}}``.
    """
    b0 = buckets[0] if buckets else None
    if b0 is None:
        raise ValueError("evaluate_family needs at least one bucket")
    for b in buckets:
        if (b.d, b.cov, b.task_masks) != (b0.d, b0.cov, b0.task_masks):
            raise ValueError(f"bucket {b.name} is not in the prompt family of {b0.name}")
    if min(lengths) < 1:
        raise ValueError(f"prompt lengths must be >= 1, got {lengths}")
    cov = b0.cov_array()
    cov_sqrt = None if cov is None else jnp.asarray(data.covariance_sqrt(cov), jnp.float32)
    masks = b0.masks_array()
    masks = None if masks is None else jnp.asarray(masks)
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    l_max = max(lengths)
    fwds = {b.name: b.forward() for b in buckets}

    @jax.jit
    def run(params, keys, n_valid):
        predictors = predictor_factory(n_valid)
        valid = jnp.broadcast_to(jnp.arange(l_max) < n_valid, (chunk, l_max))

        def one(k):
            pr = data.sample_prompts(k, chunk, l_max, b0.d, sigma2, cov_sqrt, masks)
            ctx = pr.context * valid[..., None]
            out = {}
            for name, fwd in fwds.items():
                out[name] = jax.vmap(
                    lambda p, fwd=fwd: (fwd(p, ctx, pr.query, backend=backend, kv_valid=valid)
                                        - pr.y_q) ** 2)(params[name])  # [M, b, N]
            for name, f in predictors.items():
                out[name] = (f(pr.x, pr.y, pr.x_q, valid) - pr.y_q) ** 2  # [b, N]
            return out

        return jax.lax.map(one, keys)

    p_in = {b.name: params[b.name] for b in buckets}
    results = {}
    for length in lengths:
        keys = jax.random.split(jax.random.fold_in(key, length), n_chunks)
        sq = jax.device_get(run(p_in, keys, jnp.int32(length)))
        res = {}
        for name, e in sq.items():
            e = np.asarray(e, np.float64)
            if name in fwds:  # [chunks, M, b, N]
                e = np.moveaxis(e, 1, 0).reshape(e.shape[1], -1, e.shape[-1])  # [M, n, N]
                tot = e.mean(axis=2)  # [M, n]
                res[name] = {"mse": tot.mean(axis=1).tolist(),
                             "se": (tot.std(axis=1) / math.sqrt(tot.shape[1])).tolist(),
                             "per_task": e.mean(axis=1).tolist()}
            else:  # [chunks, b, N]
                e = e.reshape(-1, e.shape[-1])
                tot = e.mean(axis=1)
                res[name] = {"mse": float(tot.mean()),
                             "se": float(tot.std() / math.sqrt(len(tot))),
                             "per_task": e.mean(axis=0).tolist()}
        results[length] = res
    return results


def _single(f):
    """Wrap a single-task predictor ``(x, y [b, L], x_q, valid) -> [b]`` to ``[b, 1]`` outputs."""
    return lambda x, y, q, v: f(x, y[..., 0], q, v)[:, None]


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
        lambda x, y, q, v: estimators.kernel_regressors(x, y, q, [w1], [m1], v))
    for name, (w, m) in (reduced or {}).items():
        preds[name] = _single(
            lambda x, y, q, v, w=w, m=m: estimators.kernel_regressors(x, y, q, w, m, v))
    return preds


def noniso_predictors(d: int, length: int, sigma2: float, cov: np.ndarray) -> dict:
    """Debiased GD with and without the ``Σ⁻¹`` preconditioner (η*), and Bayes ridge."""
    eta = estimators.eta_star(d, length, sigma2)
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    return {
        "debiased_gd": _single(lambda x, y, q, v: estimators.debiased_gd(x, y, q, eta, valid=v)),
        "precond_debiased_gd": _single(
            lambda x, y, q, v: estimators.debiased_gd(x, y, q, eta, prec, v)),
        "bayes": _single(lambda x, y, q, v: estimators.ridge(x, y, q, sigma2 * d, v)),
    }


def multitask_predictors(masks: np.ndarray, length: int, sigma2: float) -> dict:
    """Per task ``n``: debiased GD (η* with ``d = |S_n|``) and ridge on the subset ``S_n``."""
    masks = np.asarray(masks, np.float32)

    def per_task(fn):
        def f(x, y, q, v):
            outs = []
            for n, m in enumerate(masks):
                idx = np.flatnonzero(m)
                outs.append(fn(x[..., idx], y[..., n], q[..., idx], len(idx), v))
            return jnp.stack(outs, axis=-1)
        return f

    return {
        "debiased_gd": per_task(lambda x, y, q, k, v: estimators.debiased_gd(
            x, y, q, estimators.eta_star(k, length, sigma2), valid=v)),
        "ridge_subset": per_task(lambda x, y, q, k, v: estimators.ridge(x, y, q, sigma2 * k, v)),
    }

"""Training of every bucket of models as one population on the shared loop (:mod:`common.train`).

Each bucket is a population group (its models, one per seed, stacked on the ``models`` axis,
sharded over the devices where the count divides); all buckets step together in one compiled
call of ``log_every`` steps. Each step draws a fresh batch per model on device (key
``fold_in(data_key(seed), step)``; buckets of one family share it), so a run is a pure function
of (config, step): a killed run resumes from its last checkpoint and continues bit for bit as if
it had never stopped; checkpoints of another config are refused (``meta.json``).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common.rundir import MetricsWriter
from common.sharding import make_mesh
from common.train import Group, Population, Task, TrainConfig, over_models
from common.train import train as train_loop
from projects.icl_regression import data, model
from projects.icl_regression.spec import Bucket

State = dict  # {"params": {bucket: stacked params [M, ...]}, "opt": optimiser state}


def model_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, data_key)`` of the model with this seed."""
    base = jax.random.key(seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def _family(b: Bucket) -> tuple:
    """Buckets of one family (same ``d``, covariance and tasks) train on the same prompts."""
    return (b.d, b.cov, b.task_masks, b.seeds)


def _loss(b: Bucket, backend: str) -> Callable:
    """``(params, prompts) -> mse`` of one model of the bucket."""
    fwd = b.forward()
    return lambda p, pr: jnp.mean((fwd(p, pr.context, pr.query, backend=backend) - pr.y_q) ** 2)


def _patterns(b: Bucket, params: model.Params) -> dict[str, jax.Array]:
    """``omega [H]`` (mean KQ diagonal on x) and ``mu [H]`` (``[H, N]`` multitask) of one model."""
    kq, ov = model.circuits(params)  # [H, D, D], [H, N, D]
    omega = jnp.mean(jnp.diagonal(kq[:, :b.d, :b.d], axis1=-2, axis2=-1), axis=-1)
    mu = jnp.stack([ov[:, n, b.d + n] for n in range(b.n_tasks)], axis=-1)
    return {"omega": omega, "mu": mu[:, 0] if b.n_tasks == 1 else mu}


def population(buckets: list[Bucket], config: ml_collections.ConfigDict
               ) -> tuple[Population, Callable[[jax.Array], dict]]:
    """``(population, device_data)``: one group per bucket; ``device_data(step)`` gives each
    family's prompts ``{"prompts<i>": Prompts with leaves [M, batch, ...]}``."""
    batch, length, sigma2 = int(config.batch), int(config.length), float(config.sigma2)
    families: dict[tuple, str] = {}
    samplers = {}
    for b in buckets:
        if _family(b) in families:
            continue
        field = families[_family(b)] = f"prompts{len(families)}"
        cov = b.cov_array()
        cov_sqrt = None if cov is None else jnp.asarray(data.covariance_sqrt(cov), jnp.float32)
        masks = b.masks_array()
        masks = None if masks is None else jnp.asarray(masks)
        keys = jnp.stack([model_keys(s)[1] for s in b.seeds])
        samplers[field] = functools.partial(_sample, keys=keys, batch=batch, length=length,
                                            d=b.d, sigma2=sigma2, cov_sqrt=cov_sqrt, masks=masks)

    def device_data(step: jax.Array) -> dict:
        return {field: sample(step) for field, sample in samplers.items()}

    groups = tuple(
        Group(b.name, tuple(b.model_names),
              init=lambda m, b=b: model.init_params(model_keys(b.seeds[m])[0], b.width, b.heads,
                                                    b.n_tasks),
              loss=_loss(b, str(config.backend)), data=families[_family(b)],
              labels=tuple({"bucket": b.name, "seed": s} for s in b.seeds),
              probe=functools.partial(_patterns, b))
        for b in buckets)
    return Population(groups), device_data


def _sample(step, *, keys, batch, length, d, sigma2, cov_sqrt, masks) -> data.Prompts:
    """Each model's prompts at ``step``: leaves ``[M, batch, ...]``."""
    return over_models(lambda k: data.sample_prompts(
        jax.random.fold_in(k, step), batch, length, d, sigma2, cov_sqrt, masks))(keys)


def _meta(buckets: list[Bucket], config: ml_collections.ConfigDict) -> dict:
    """What a checkpoint must agree on to be resumed."""
    keys = ("d", "length", "sigma2", "batch", "lr", "log_every", "backend")
    return {"buckets": [b.name + ":" + ",".join(map(str, b.seeds)) for b in buckets],
            "state": "common.train.TrainState", **{k: config[k] for k in keys}}


@functools.lru_cache(maxsize=8)
def _adam(lr: float) -> optax.GradientTransformation:
    """One optimiser object per learning rate."""
    return optax.adam(lr)


def train(buckets: list[Bucket], config: ml_collections.ConfigDict, workdir: pathlib.Path,
          metrics: MetricsWriter | None = None, *, progress: bool = True,
          stop_at: int | None = None) -> tuple[State, int]:
    """Train every bucket to ``config.steps``, resuming from ``workdir/checkpoints``.

    Args:
      buckets: from :func:`projects.icl_regression.spec.buckets`.
      config: the validated config.
      workdir: run directory (``checkpoints/``, and ``metrics.jsonl`` unless ``metrics``).
      metrics: where one JSON line per (logged step, model) goes: model, bucket, seed, loss
        (mean over the logged steps), grad_norm, omega and mu (at the logged step).
      progress: show a tqdm bar.
      stop_at: stop at this step (as if killed there); for resume tests and benchmarks.

    Returns:
      ``(state, step)``: final (or interrupted) state and its step.
    """
    pop, device_data = population(buckets, config)
    tc = TrainConfig(steps=int(stop_at or config.steps), log_every=int(config.log_every),
                     checkpoint_every=int(config.ckpt_every), keep_checkpoints=2,
                     steps_per_call=int(config.log_every), progress=progress)
    result = train_loop(Task.for_population(pop, device_data), _adam(float(config.lr)), None, tc,
                        make_mesh(), workdir, meta=_meta(buckets, config), metrics=metrics)
    return {"params": result.state.params, "opt": result.state.opt_state}, int(result.state.step)


def unstack(state: State, bucket: Bucket) -> list[model.Params]:
    """The bucket's per-model parameter dicts (numpy)."""
    p = jax.device_get(state["params"][bucket.name])
    return [jax.tree.map(lambda x, m=m: np.asarray(x[m]), p) for m in range(len(bucket.seeds))]

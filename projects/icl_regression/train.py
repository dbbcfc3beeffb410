"""Training of every bucket of models in one compiled program (vmap over seeds, scan over steps).

Each step draws a fresh batch per model inside the compiled step (key ``fold_in(seed, step)``),
so a run is a pure function of (config, step): a killed run resumes from its last checkpoint
(``common.train.Checkpointer``: orbax, size-verified, a damaged step is set aside) and continues
bit for bit as if it had never stopped.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from common.rundir import MetricsWriter
from common.train.checkpoint import Checkpointer
from projects.icl_regression import data, model
from projects.icl_regression.spec import Bucket

State = dict  # {"params": {bucket: stacked params}, "opt": {bucket: stacked optimiser state}}


def model_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, data_key)`` of the model with this seed."""
    base = jax.random.key(seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def init_state(buckets: list[Bucket], optimizer: optax.GradientTransformation) -> State:
    """Parameters (PyTorch-default init) and optimiser state, stacked per bucket (one jit)."""
    return _init_fn(tuple(buckets), optimizer)()


@functools.lru_cache(maxsize=8)
def _init_fn(buckets: tuple[Bucket, ...], optimizer: optax.GradientTransformation) -> Callable:
    def init():
        params = {}
        for b in buckets:
            per = [model.init_params(model_keys(s)[0], b.width, b.heads, b.n_tasks)
                   for s in b.seeds]
            params[b.name] = jax.tree.map(lambda *a: jnp.stack(a), *per)
        opt = {name: jax.vmap(optimizer.init)(p) for name, p in params.items()}
        return {"params": params, "opt": opt}

    return jax.jit(init)


def place_models(state: State) -> State:
    """Spread every leading model axis over this process's devices where it divides evenly.

    One device: unchanged. Several (GPUs, TPU cores, or ``--xla_force_host_platform_device_count``
    CPU devices): the compiled step follows the placement (GSPMD), so each device trains its
    share of the seeds; axes that do not divide stay replicated. Single-process only.
    """
    devices = jax.local_devices()
    if len(devices) == 1:
        return state
    mesh = jax.sharding.Mesh(np.array(devices), ("models",),
                             axis_types=(jax.sharding.AxisType.Auto,))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("models"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda x: jax.device_put(x, split if x.ndim and x.shape[0] % len(devices) == 0 else whole),
        state)


def _family(b: Bucket) -> tuple:
    """Buckets of one family (same ``d``, covariance and tasks) train on the same prompts."""
    return (b.d, b.cov, b.task_masks, b.seeds)


def over_models(fn: Callable) -> Callable:
    """``jax.vmap(fn)`` over the leading model axis, or ``fn`` on the one model when it is 1.

    A model axis of size 1 costs nothing in math but slowed XLA:CPU's loops by 1.3x (the one-seed
    runs of ``tools/bench_icl.py``); dropping it makes a one-model bucket run the plain step.
    """
    vfn = jax.vmap(fn)

    def run(*args):
        if jax.tree.leaves(args)[0].shape[0] != 1:
            return vfn(*args)
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return run


def _bucket_loss_grad(b: Bucket, backend: str) -> Callable:
    """``(params, prompts) -> (loss, grads)`` of one model of the bucket."""
    fwd = b.forward()

    def loss_fn(p, pr):
        return jnp.mean((fwd(p, pr.context, pr.query, backend=backend) - pr.y_q) ** 2)

    return jax.value_and_grad(loss_fn)


def make_chunk(buckets: list[Bucket], config: ml_collections.ConfigDict,
               optimizer: optax.GradientTransformation) -> Callable:
    """Jitted ``(state, t0, n) -> (state, mean loss per bucket [M])`` running steps t0..t0+n-1.

    Per step and per family one fresh batch is drawn for each seed (vmapped over the model
    axis); every bucket of the family takes one Adam step on it (vmapped over the model axis).
    Cached: a resumed run in the same process reuses the compiled program.
    """
    return _chunk_fn(tuple(buckets), int(config.batch), int(config.length),
                     float(config.sigma2), str(config.backend), optimizer)


@functools.lru_cache(maxsize=8)
def _chunk_fn(buckets: tuple[Bucket, ...], batch: int, length: int, sigma2: float,
              backend: str, optimizer: optax.GradientTransformation) -> Callable:
    families: dict[tuple, list[Bucket]] = {}
    for b in buckets:
        families.setdefault(_family(b), []).append(b)
    samplers = []
    for members in families.values():
        b0 = members[0]
        cov = b0.cov_array()
        cov_sqrt = None if cov is None else jnp.asarray(data.covariance_sqrt(cov), jnp.float32)
        masks = b0.masks_array()
        masks = None if masks is None else jnp.asarray(masks)
        keys = jnp.stack([model_keys(s)[1] for s in b0.seeds])

        def sample(t, b0=b0, cov_sqrt=cov_sqrt, masks=masks, keys=keys):
            return over_models(lambda k: data.sample_prompts(
                jax.random.fold_in(k, t), batch, length, b0.d, sigma2, cov_sqrt, masks))(keys)

        samplers.append((sample, [(b.name, _bucket_loss_grad(b, backend)) for b in members]))

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    vupdate = over_models(update)

    def chunk(state, t0, n):
        def body(st, t):
            params, opt, losses = {}, {}, {}
            for sample, members in samplers:
                prompts = sample(t)  # leaves [M, batch, ...]
                for name, loss_grad in members:
                    losses[name], grads = over_models(loss_grad)(st["params"][name], prompts)
                    params[name], opt[name] = vupdate(st["params"][name], st["opt"][name], grads)
            return {"params": params, "opt": opt}, losses

        state, losses = jax.lax.scan(body, state, t0 + jnp.arange(n))
        return state, jax.tree.map(lambda x: jnp.mean(x, axis=0), losses)

    # No buffer donation: orbax may still be reading the previous state while saving.
    return jax.jit(chunk, static_argnums=2)


def _meta(buckets: list[Bucket], config: ml_collections.ConfigDict) -> dict:
    """What a checkpoint must agree on to be resumed."""
    keys = ("d", "length", "sigma2", "batch", "lr", "log_every", "backend")
    return {"buckets": [b.name + ":" + ",".join(map(str, b.seeds)) for b in buckets],
            **{k: config[k] for k in keys}}


@functools.lru_cache(maxsize=8)
def _adam(lr: float) -> optax.GradientTransformation:
    """One optimiser object per learning rate (so cached compiled programs are reused)."""
    return optax.adam(lr)


def make_pattern_probe(buckets: list[Bucket]) -> Callable:
    """Jitted ``params -> {bucket: (omega [M, H], mu [M, H, N])}`` (see :mod:`analysis`)."""
    return _probe_fn(tuple(buckets))


@functools.lru_cache(maxsize=8)
def _probe_fn(buckets: tuple[Bucket, ...]) -> Callable:

    def probe(params):
        out = {}
        for b in buckets:
            kq, ov = jax.vmap(model.circuits)(params[b.name])  # [M, H, D, D], [M, H, N, D]
            omega = jnp.mean(jnp.diagonal(kq[..., :b.d, :b.d], axis1=-2, axis2=-1), axis=-1)
            mu = jnp.stack([ov[..., n, b.d + n] for n in range(b.n_tasks)], axis=-1)
            out[b.name] = (omega, mu)
        return out

    return jax.jit(probe)


def train(buckets: list[Bucket], config: ml_collections.ConfigDict, ckpt_dir: pathlib.Path,
          metrics: MetricsWriter | None = None, *, progress: bool = True,
          stop_after_chunks: int | None = None) -> tuple[State, int]:
    """Train every bucket to ``config.steps``, resuming from ``ckpt_dir`` when it holds a run.

    Args:
      buckets: from :func:`projects.icl_regression.spec.buckets`.
      config: the validated config.
      ckpt_dir: orbax checkpoint directory (created).
      metrics: where one JSON line per (logged step, model) goes.
      progress: show a tqdm bar.
      stop_after_chunks: stop (as if killed) after this many chunks; for resume tests.

    Returns:
      ``(state, step)``: final (or interrupted) state and its step.
    """
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = _meta(buckets, config)
    meta_path = ckpt_dir / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != json.loads(json.dumps(meta)):
            raise ValueError(
                f"{ckpt_dir} holds checkpoints of a different run ({old}); the config now gives "
                f"{meta}. Use another --workdir or remove that checkpoints/ folder."
            )
    else:
        meta_path.write_text(json.dumps(meta, indent=2))
    optimizer = _adam(float(config.lr))
    state = place_models(init_state(buckets, optimizer))
    ckpt = Checkpointer(ckpt_dir, keep=2)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    restored = ckpt.restore(abstract)
    step = 0
    if restored is not None:
        step, state, _ = restored
    chunk = make_chunk(buckets, config, optimizer)
    probe = make_pattern_probe(buckets)
    bar = tqdm(total=config.steps, initial=step, desc="icl_regression train", disable=not progress,
               unit="step", dynamic_ncols=True)
    n_chunks = 0
    try:
        while step < config.steps:
            n = min(config.log_every, config.steps - step)
            state, losses = chunk(state, step, n)
            step += n
            losses = jax.device_get(losses)
            for b in buckets:
                for m, name in enumerate(b.model_names):
                    if not np.isfinite(losses[b.name][m]):
                        raise FloatingPointError(
                            f"training diverged: model {name} has loss {losses[b.name][m]} at "
                            f"step {step} (lower config.lr?)")
            if metrics is not None:
                pats = jax.device_get(probe(state["params"]))
                for b in buckets:
                    omega, mu = pats[b.name]
                    for m, name in enumerate(b.model_names):
                        mu_m = mu[m, :, 0] if b.n_tasks == 1 else mu[m]
                        metrics.write(step, model=name, bucket=b.name, seed=b.seeds[m],
                                      train_loss=float(losses[b.name][m]), omega=omega[m],
                                      mu=mu_m)
            if step % config.ckpt_every == 0 or step == config.steps:
                ckpt.save(step, state, {"step": step})
            bar.update(n)
            bar.set_postfix({b.name: f"{float(np.mean(losses[b.name])):.3f}" for b in buckets[:4]})
            n_chunks += 1
            if stop_after_chunks is not None and n_chunks >= stop_after_chunks:
                break
    finally:
        ckpt.close()
        bar.close()
    return state, step


def unstack(state: State, bucket: Bucket) -> list[model.Params]:
    """The bucket's per-model parameter dicts (numpy)."""
    p = jax.device_get(state["params"][bucket.name])
    return [jax.tree.map(lambda x, m=m: np.asarray(x[m]), p) for m in range(len(bucket.seeds))]

"""The training loop: one readable function, in the big_vision manner.

    result = train(task, optax.adamw(1e-3), dataset, TrainConfig(steps=1000), mesh, workdir)

Sections: (1) mesh and sharded init, (2) restore (params, optimiser and data iterator together),
(3) the loop under ``jax.transfer_guard("disallow")`` (every host<->device copy is explicit),
(4) metrics, checkpoints and evaluation at their intervals, (5) a final checkpoint.

Restarting the same command resumes from the newest intact checkpoint and, the step being
deterministic, ends bit-identical to a run that was never interrupted: same parameters, same
optimiser state, same batches (``data_crc``, a running CRC-32 of every batch this process read,
is saved with the checkpoint and reported in ``summary``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from common.data.pipeline import iterate
from common.rundir import MetricsWriter
from common.sharding.mesh import describe
from common.sharding.rules import DEFAULT_RULES, Rules, logical_to_spec
from common.sharding.state import ModelDef, ShardedInit, TrainState, sharded_init
from common.train.checkpoint import Checkpointer
from common.train.step import LossFn, leaf_names, make_train_step


class NonFiniteError(FloatingPointError):
    """Update ``step`` (1-based, as in metrics.jsonl) had a NaN/Inf loss or gradient.

    ``leaves`` names the offending gradient leaves (``"blocks/0/attn/q_kernel"``) and/or
    ``"loss"``. The update was not applied; checkpoints hold only finite states.
    """

    def __init__(self, step: int, leaves: list[str]):
        self.step, self.leaves = step, leaves
        shown = ", ".join(repr(n) for n in leaves[:5]) + (" ..." if len(leaves) > 5 else "")
        super().__init__(f"step {step}: non-finite value in {shown}; the update was not applied "
                         "and training stopped")


@dataclasses.dataclass(frozen=True)
class Task:
    """What to train.

    Attributes:
      make_model: builds the NNX model with fixed rngs (identical on every process).
      loss_fn: ``(model, batch) -> (mean loss, {metric: scalar})``.
      batch_axes: logical axis names of each batch field, e.g. ``{"input_ids": ("batch", "seq")}``.
      device_data: optional online data generated on device: ``step (int32 scalar) -> global
        batch``, traced into the jitted step (e.g. fresh regression prompts from
        ``jax.random.fold_in(key, step)``). Used when ``train`` gets ``dataset=None``: no host
        pipeline, nothing to save but the step.
    """

    make_model: Callable[[], nnx.Module]
    loss_fn: LossFn
    batch_axes: dict[str, tuple[str | None, ...]]
    device_data: Callable[[jax.Array], dict] | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings (see the module docstring).

    ``compute_dtype``: ``"bfloat16"``/``"float16"`` for mixed precision, None for the param dtype.
    ``*_every``: intervals in steps; 0 disables (a final checkpoint is always written unless
    ``checkpoint_every`` is 0).
    """

    steps: int
    grad_accum: int = 1
    compute_dtype: str | None = None
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    eval_every: int = 0
    resume: bool = True
    progress: bool = True
    guard_transfers: bool = True
    prefetch_threads: int = 0


@dataclasses.dataclass
class TrainResult:
    """The final state, how to rebuild the model, the summary, and each iteration's wall time.

    ``step_times[i]`` covers iteration ``i`` of this run (data, dispatch, waiting for the
    previous step, metrics, checkpoint save call, eval); the first one includes compilation.
    """

    state: TrainState
    model_def: ModelDef
    init: ShardedInit
    summary: dict
    step_times: list[float] = dataclasses.field(default_factory=list)

    def model(self) -> nnx.Module:
        """The trained model (parameters keep their shardings)."""
        return self.model_def.bind(self.state.params)


def batch_crc(batch: dict, crc: int = 0) -> int:
    """CRC-32 of a host batch (fields in sorted order), continuing from ``crc``."""
    for k in sorted(batch):
        crc = zlib.crc32(np.ascontiguousarray(batch[k]).view(np.uint8), crc)
    return crc


def _with_crc(batch: dict) -> tuple[dict, int]:
    # Runs in grain's prefetch threads when there are any (zlib releases the GIL).
    return batch, batch_crc(batch)


def train(
    task: Task,
    tx: optax.GradientTransformation,
    dataset,
    config: TrainConfig,
    mesh: Mesh,
    workdir: str | os.PathLike,
    *,
    rules: Rules = DEFAULT_RULES,
    eval_fn: Callable[[nnx.Module, int], dict[str, Any]] | None = None,
) -> TrainResult:
    """Train ``task`` with ``tx`` on this process's ``dataset`` slice; see the module docstring.

    Args:
      dataset: a grain ``MapDataset`` of this process's local batches (dicts of numpy arrays),
        e.g. from :func:`common.data.batched_dataset`.
      workdir: run directory; writes ``metrics.jsonl`` and ``checkpoints/``.
      eval_fn: called every ``config.eval_every`` steps with the model; its dict is logged as
        ``eval/<name>``.
    """
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    metrics_out = MetricsWriter(workdir / "metrics.jsonl") if lead else None

    # ---- (1) mesh, shardings, sharded init ------------------------------------------------
    init = sharded_init(task.make_model, tx, mesh, rules)
    batch_shardings = {k: NamedSharding(mesh, logical_to_spec(v, rules, mesh))
                       for k, v in task.batch_axes.items()}
    replicated = NamedSharding(mesh, PartitionSpec())
    compute_dtype = None if config.compute_dtype is None else jnp.dtype(config.compute_dtype)
    on_device = dataset is None
    if on_device and task.device_data is None:
        raise ValueError("train: dataset=None needs a Task with device_data")
    base_step = make_train_step(init.model_def, task.loss_fn, tx, grad_accum=config.grad_accum,
                                compute_dtype=compute_dtype,
                                device_data=task.device_data if on_device else None,
                                batch_shardings=batch_shardings)
    metric_names: list[str] = []  # filled when the step is traced

    def packed_step(state, batch):
        # metrics and guard flags in one float32 vector: one device->host copy per step
        state, metrics, finite = base_step(state, batch)
        metric_names[:] = sorted(metrics)
        packed = jnp.concatenate([jnp.stack([metrics[k].astype(jnp.float32)
                                             for k in metric_names]),
                                  finite.astype(jnp.float32)])
        return state, packed

    step_fn = jax.jit(
        packed_step,
        in_shardings=(init.shardings, None if on_device else batch_shardings),
        out_shardings=(init.shardings, replicated),
        donate_argnums=0,
    )

    guarded = leaf_names(init.abstract.params) + ["loss"]

    # ---- (2) restore or create ---------------------------------------------------------------
    ckpt = (Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                         async_save=config.async_checkpoint)
            if config.checkpoint_every else None)
    data_iter = (None if on_device else
                 iterate(dataset.map(_with_crc), prefetch_threads=config.prefetch_threads))
    restored = ckpt.restore(init.abstract) if (ckpt and config.resume) else None
    if restored is not None:
        start, state, data_state = restored
        if not on_device:
            data_iter.set_state(data_state["iterator"])
        crc = int(data_state["data_crc"])
    else:
        start, state, crc = 0, init.create(), 0
    if lead and restored is not None:
        metrics_out.write(start, event="resumed", mesh=describe(mesh))

    def put(local: dict) -> dict:
        # The one intended host->device copy per step (explicit; allowed under the guard).
        n = jax.process_count()
        with jax.transfer_guard_host_to_device("allow"):
            return {k: jax.make_array_from_process_local_data(
                        batch_shardings[k], v, (v.shape[0] * n, *v.shape[1:]))
                    for k, v in local.items()}

    def check(pending) -> dict:
        step, packed = pending
        packed = jax.device_get(packed)
        n = len(metric_names)
        metrics = dict(zip(metric_names, packed[:n].tolist(), strict=True))
        finite = packed[n:] > 0
        if not finite.all():
            raise NonFiniteError(step + 1, [guarded[i] for i in np.flatnonzero(~finite)])
        return metrics

    def save(step: int) -> None:
        with jax.transfer_guard("allow"):
            ckpt.save(step, state, {"iterator": None if on_device else data_iter.get_state(),
                                    "data_crc": crc})

    # ---- (3) the loop ----------------------------------------------------------------------
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and lead),
               desc="train", dynamic_ncols=True)
    window: list[dict] = []
    step_times: list[float] = []
    pending = None
    last = {}
    t_window = t_loop = time.perf_counter()
    cpu_loop = time.process_time()
    guard = jax.transfer_guard("disallow" if config.guard_transfers else "allow")
    try:
        with guard:
            for step in range(start, config.steps):
                t0 = time.perf_counter()
                if on_device:
                    batch = None
                else:
                    local, local_crc = next(data_iter)
                    crc = zlib.crc32(local_crc.to_bytes(4, "little"), crc)
                    batch = put(local)
                state, packed = step_fn(state, batch)
                if pending is not None:  # fetch the previous step while this one runs
                    window.append(check(pending))
                pending = (step, packed)
                done = step + 1
                at = lambda every, done=done: every and (done % every == 0 or done == config.steps)
                if at(config.log_every) or at(config.checkpoint_every) or at(config.eval_every):
                    window.append(check(pending))
                    pending = None
                if at(config.log_every) and window:
                    dt = time.perf_counter() - t_window
                    last = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                    if lead:
                        metrics_out.write(done, **last, data_crc=crc,
                                          steps_per_sec=len(window) / dt)
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    window, t_window = [], time.perf_counter()
                if ckpt is not None and at(config.checkpoint_every):
                    save(done)
                if eval_fn is not None and at(config.eval_every):
                    with jax.transfer_guard("allow"):
                        ev = {f"eval/{k}": float(v)
                              for k, v in eval_fn(init.model_def.bind(state.params), done).items()}
                    if lead:
                        metrics_out.write(done, **ev)
                    last.update(ev)
                bar.update(1)
                step_times.append(time.perf_counter() - t0)
                if step == start:  # compiled and ran once: time the rest
                    jax.block_until_ready(state)
                    t_loop, cpu_loop = time.perf_counter(), time.process_time()
            if pending is not None:
                window.append(check(pending))
        t_end, cpu_end = time.perf_counter(), time.process_time()
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()  # waits for the last async save
    t_closed = time.perf_counter()
    timed = config.steps - start - 1

    summary = {
        "steps": config.steps,
        "resumed_from": start,
        "mesh": describe(mesh),
        "processes": jax.process_count(),
        "data_crc": crc,
        "median_step_s": float(np.median(step_times)) if step_times else None,
        # wall time per step after the first (compile) step, metrics and checkpoint saves
        # included; the wait for the last save to reach the disk is ``final_wait_s``
        "mean_step_s": (t_end - t_loop) / timed if timed > 0 else None,
        "mean_step_cpu_s": (cpu_end - cpu_loop) / timed if timed > 0 else None,  # all threads
        "final_wait_s": t_closed - t_end,
        **{f"final_{k}": v for k, v in last.items()},
    }
    return TrainResult(state=state, model_def=init.model_def, init=init, summary=summary,
                       step_times=step_times)

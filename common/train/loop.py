"""The training loop: one readable function, in the big_vision manner.

    result = train(task, optax.adamw(1e-3), dataset, TrainConfig(steps=1000), mesh, workdir)

Sections: (1) mesh and sharded init, (2) restore (params, optimiser and data iterator together),
(3) the loop under ``jax.transfer_guard("disallow")`` (every host<->device copy is explicit),
(4) metrics, checkpoints and evaluation at their intervals, (5) a final checkpoint.

Restarting the same command resumes from the newest intact checkpoint and, the step being
deterministic, ends bit-identical to a run that was never interrupted: same parameters, same
optimiser state, same batches (``data_crc``, a running CRC-32 of every batch this process read,
is saved with the checkpoint and reported in ``summary``). ``meta`` (what a checkpoint must
agree on, e.g. the config) is kept in ``checkpoints/meta.json``: another run's checkpoints are
refused, not resumed.

Data made on device (``Task.device_data``) may run ``TrainConfig.steps_per_call`` steps per
compiled call (``lax.scan``; calls start at multiples of it, so a resumed run replays the same
calls), for steps of a millisecond whose dispatch would otherwise dominate. Every step's metrics
come back.

A population (:mod:`common.train.population`, ``Task.for_population``) trains many models in
one step; metrics.jsonl then holds one row per (logged step, model).

For pods: on SIGTERM (a preemption notice) every process agrees on one step, saves it and the
loop returns with ``summary["preempted_at"]`` (:mod:`common.train.preemption`); checkpoints carry
per-array checksums (:mod:`common.train.orbax_checkpoint`); the logged rows (loss, gradient
norm, learning rate, steps/s, tokens/s, device memory) also go to TensorBoard event files under
``tensorboard/``; ``TrainConfig.profile`` traces a window of steps into ``profile/``
(:mod:`common.train.watch`). A pretrained start (``Task.init_params``) puts the loaded
parameters straight onto their shardings.
"""

from __future__ import annotations

import dataclasses
import json
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
from common.progress import quiet
from common.rundir import MetricsWriter, atomic_write_text
from common.sharding.mesh import describe
from common.sharding.rules import DEFAULT_RULES, Rules, activation_placement, logical_to_spec
from common.sharding.state import ModelDef, ShardedInit, TrainState, sharded_init
from common.train.orbax_checkpoint import Checkpointer
from common.train.population import MODELS, Population
from common.train.preemption import PreemptionWatch
from common.train.step import LossFn, leaf_names, make_train_step
from common.train.watch import ProfileWindow, TensorBoard, device_memory


class NonFiniteError(FloatingPointError):
    """Update ``step`` (1-based, as in metrics.jsonl) had a NaN/Inf loss or gradient.

    ``leaves`` names the offending gradient leaves (``"blocks/0/attn/q_kernel"``) and/or
    ``"loss"``; in a population ``"<model>/<leaf>"``, and ``models`` names the models. The
    update was not applied; checkpoints hold only finite states.
    """

    def __init__(self, step: int, leaves: list[str], models: list[str] | None = None):
        self.step, self.leaves, self.models = step, leaves, models or []
        shown = ", ".join(repr(n) for n in leaves[:5]) + (" ..." if len(leaves) > 5 else "")
        who = f"model {', '.join(self.models)}: " if self.models else ""
        super().__init__(f"step {step}: {who}non-finite value in {shown}; the update was not "
                         "applied and training stopped")


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
      population: set by :meth:`for_population`: the models trained together.
      init_params: optional pretrained start: ``(mesh, rules) -> params`` in
        ``nnx.to_pure_dict`` layout, instead of ``make_model``'s random initialisation (which
        then only gives the shapes). Arrays already on the rules' shardings (e.g. from
        ``load_pretrained(path, mesh=mesh, rules=rules)``, which reads each device's slice
        straight from the file: a 7B-70B model never sits whole on one host) are kept; host
        arrays are placed.
      lr_schedule: optional ``step -> learning rate`` of ``tx``, logged as ``lr``.
      token_field: the batch field whose elements are tokens (``"input_ids"``), for tokens/s.
    """

    make_model: Callable[[], nnx.Module]
    loss_fn: LossFn
    batch_axes: dict[str, tuple[str | None, ...]]
    device_data: Callable[[jax.Array], dict] | None = None
    population: Population | None = None
    init_params: Callable[[Mesh, Rules], dict] | None = None
    lr_schedule: Callable[[int], Any] | None = None
    token_field: str | None = None

    @classmethod
    def for_population(cls, population: Population,
                       device_data: Callable[[jax.Array], dict]) -> Task:
        """Train ``population`` on ``device_data(step) -> {field: leaves [M_g, ...]}``."""
        return cls(population.make_model, population.loss_fn,
                   {g.data: (MODELS,) for g in population.groups}, device_data, population)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings (see the module docstring).

    ``compute_dtype``: ``"bfloat16"``/``"float16"`` for mixed precision, None for the param dtype.
    ``*_every``: intervals in steps; 0 disables (a final checkpoint is always written unless
    ``checkpoint_every`` is 0). ``steps_per_call`` (on-device data only) must divide them.
    ``profile``: ``(start, steps)``: a jax.profiler trace of those steps into ``profile/``.
    ``tensorboard``: also write the logged rows as TensorBoard events under ``tensorboard/``.
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
    steps_per_call: int = 1
    profile: tuple[int, int] | None = None
    tensorboard: bool = True


@dataclasses.dataclass
class TrainResult:
    """The final state, how to rebuild the model, the summary, and each iteration's wall time.

    ``step_times[i]`` covers iteration ``i`` of this run (data, dispatch, waiting for the
    previous call, metrics, checkpoint save call, eval); the first one includes compilation.
    An iteration is one compiled call: ``steps_per_call`` steps.
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


def check_meta(directory: pathlib.Path, meta: dict) -> None:
    """Refuse ``directory``'s checkpoints if their ``meta.json`` differs from ``meta``; else
    record ``meta`` there (first run)."""
    path = directory / "meta.json"
    meta = json.loads(json.dumps(meta))
    if path.exists():
        old = json.loads(path.read_text())
        if old != meta:
            raise ValueError(
                f"{directory} holds checkpoints of a different run ({old}); the config now gives "
                f"{meta}. Use another --workdir or remove that checkpoints/ folder.")
    elif jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(meta, indent=2))


def _unpacker(layout: list[tuple[str, tuple[int, ...]]]) -> Callable:
    """``packed [P] -> ({name: float | array}, finite bool [F])`` for the step's packing."""

    def unpack(packed: np.ndarray):
        metrics, i = {}, 0
        for name, shape in layout:
            n = int(np.prod(shape))
            v = packed[i:i + n]
            metrics[name] = float(v[0]) if not shape else v.reshape(shape)
            i += n
        return metrics, packed[i:] > 0

    return unpack


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
    meta: dict | None = None,
    metrics: MetricsWriter | None = None,
) -> TrainResult:
    """Train ``task`` with ``tx`` on this process's ``dataset`` slice; see the module docstring.

    Args:
      dataset: a grain ``MapDataset`` of this process's local batches (dicts of numpy arrays),
        e.g. from :func:`common.data.batched_dataset`; None for ``task.device_data``.
      workdir: run directory; writes ``metrics.jsonl`` and ``checkpoints/``.
      eval_fn: called every ``config.eval_every`` steps with the model; its dict is logged as
        ``eval/<name>``.
      meta: JSON-able description the checkpoints must match to be resumed (e.g. the config).
      metrics: where the rows go (default ``workdir/metrics.jsonl``).
    """
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    metrics_out = (metrics or MetricsWriter(workdir / "metrics.jsonl")) if lead else None
    population = task.population
    per_call = config.steps_per_call
    on_device = dataset is None
    if on_device and task.device_data is None:
        raise ValueError("train: dataset=None needs a Task with device_data")
    if per_call > 1 and not on_device:
        raise ValueError("TrainConfig.steps_per_call > 1 needs on-device data (dataset=None)")
    for field in ("log_every", "checkpoint_every", "eval_every"):
        if getattr(config, field) % per_call:
            raise ValueError(f"TrainConfig.{field} ({getattr(config, field)}) must be a multiple "
                             f"of steps_per_call ({per_call})")

    # ---- (1) mesh, shardings, sharded init ------------------------------------------------
    init = sharded_init(task.make_model, tx, mesh, rules)
    # The global batch's shapes decide which mesh axes divide each field (a model axis or a
    # batch that an axis does not divide stays replicated along it).
    if on_device:
        shapes = jax.eval_shape(task.device_data, jnp.zeros((), jnp.int32))
    else:  # this process's first batch, times the number of processes
        first, n_proc = dataset[0], jax.process_count()
        shapes = {k: jax.ShapeDtypeStruct((np.shape(first[k])[0] * n_proc,)
                                          + np.shape(first[k])[1:], np.asarray(first[k]).dtype)
                  for k in task.batch_axes}
    batch_shardings = {
        f: jax.tree.map(lambda a, v=v: NamedSharding(mesh, logical_to_spec(
            v, rules, mesh, a.shape)), shapes[f]) for f, v in task.batch_axes.items()}
    replicated = NamedSharding(mesh, PartitionSpec())
    compute_dtype = None if config.compute_dtype is None else jnp.dtype(config.compute_dtype)
    base_step = make_train_step(init.model_def, task.loss_fn, tx, grad_accum=config.grad_accum,
                                compute_dtype=compute_dtype,
                                device_data=task.device_data if on_device else None,
                                batch_shardings=batch_shardings, population=population,
                                placement=None if population is not None
                                else activation_placement(mesh, rules))
    layout: list[tuple[str, tuple[int, ...]]] = []  # (metric, shape), filled when traced

    def packed_step(state, batch):
        # metrics and guard flags in one float32 vector: one device->host copy per call
        state, metrics, finite = base_step(state, batch)
        layout[:] = [(k, metrics[k].shape) for k in sorted(metrics)]
        packed = jnp.concatenate([metrics[k].astype(jnp.float32).ravel() for k in sorted(metrics)]
                                 + [finite.astype(jnp.float32)])
        return state, packed

    def packed_steps(state, batch, n):
        # ``[n, P]``: one row per step; n > 1 only for on-device data
        if n == 1:
            state, packed = packed_step(state, batch)
            return state, packed[None]
        return jax.lax.scan(lambda s, _: packed_step(s, None), state, None, length=n)

    step_fn = jax.jit(
        packed_steps,
        in_shardings=(init.shardings, None if on_device else batch_shardings),
        out_shardings=(init.shardings, replicated),
        static_argnums=2,
        donate_argnums=0,
    )
    probe_fn = (jax.jit(population.probe, out_shardings=replicated)
                if population is not None and any(g.probe for g in population.groups) else None)

    if population is None:
        guarded, owners = leaf_names(init.abstract.params) + ["loss"], None
    else:
        guarded = population.flag_names(leaf_names, init.abstract.params)
        owners = [n.split("/", 1)[0] for n in guarded]

    # ---- (2) restore or create ---------------------------------------------------------------
    ckpt = None
    if config.checkpoint_every:
        if meta is not None:
            check_meta(workdir / "checkpoints", meta)
        ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                            async_save=config.async_checkpoint)
    data_iter = (None if on_device else
                 iterate(dataset.map(_with_crc), prefetch_threads=config.prefetch_threads))
    restored = ckpt.restore(init.abstract) if (ckpt and config.resume) else None
    if restored is not None:
        start, state, data_state = restored
        if not on_device:
            data_iter.set_state(data_state["iterator"])
        crc = int(data_state["data_crc"])
    elif task.init_params is not None:
        start, state, crc = 0, _pretrained_state(init, tx, task.init_params(mesh, rules)), 0
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

    def check(pending) -> list[dict]:
        first, packed = pending
        unpack = _unpacker(layout)
        rows = []
        for i, row in enumerate(np.asarray(jax.device_get(packed))):
            metrics, finite = unpack(row)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                raise NonFiniteError(first + i + 1, [guarded[j] for j in bad],
                                     owners and list(dict.fromkeys(owners[j] for j in bad)))
            rows.append(metrics)
        return rows

    def save(step: int) -> None:
        with jax.transfer_guard("allow"):
            ckpt.save(step, state, {"iterator": None if on_device else data_iter.get_state(),
                                    "data_crc": crc})

    tokens_per_step = (int(np.prod(shapes[task.token_field].shape))
                       if task.token_field and population is None else None)
    board = (TensorBoard(workdir / "tensorboard")
             if lead and config.tensorboard and population is None else None)
    profiler = ProfileWindow(config.profile, workdir / "profile")

    def log(step: int, last: dict, steps_per_sec: float) -> None:
        if population is None:
            extra = {"steps_per_sec": steps_per_sec, **device_memory()}
            if tokens_per_step:
                extra["tokens_per_sec"] = tokens_per_step * steps_per_sec
            if task.lr_schedule is not None:
                with jax.transfer_guard("allow"):  # the rate of the last update
                    extra["lr"] = float(task.lr_schedule(step - 1))
            metrics_out.write(step, **last, data_crc=crc, **extra)
            if board is not None:
                board.write(step, {**{k: v for k, v in last.items() if np.ndim(v) == 0},
                                   **extra})
            return
        probed = jax.device_get(probe_fn(state.params)) if probe_fn else {}
        for row in population.rows(last, probed):
            metrics_out.write(step, **row, steps_per_sec=steps_per_sec)

    # ---- (3) the loop ----------------------------------------------------------------------
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and lead) or quiet(),
               desc="train", dynamic_ncols=True)
    window: list[dict] = []
    step_times: list[float] = []
    pending = None
    last = {}
    t_window = t_loop = time.perf_counter()
    cpu_loop = time.process_time()
    timed_from = start
    guard = jax.transfer_guard("disallow" if config.guard_transfers else "allow")
    preempted_at = None
    try:
        with guard, PreemptionWatch() as preemption:
            step = start
            while step < config.steps:
                t0 = time.perf_counter()
                n = min(per_call - step % per_call, config.steps - step)
                profiler.before(step)
                if on_device:
                    batch = None
                else:
                    local, local_crc = next(data_iter)
                    crc = zlib.crc32(local_crc.to_bytes(4, "little"), crc)
                    batch = put(local)
                state, packed = step_fn(state, batch, n)
                if pending is not None:  # fetch the previous call while this one runs
                    window.extend(check(pending))
                pending = (step, packed)
                done = step = step + n
                at = lambda every, done=done: every and (done % every == 0 or done == config.steps)
                if at(config.log_every) or at(config.checkpoint_every) or at(config.eval_every):
                    window.extend(check(pending))
                    pending = None
                if at(config.log_every) and window:
                    dt = time.perf_counter() - t_window
                    last = {k: np.mean([m[k] for m in window], axis=0) for k in window[0]}
                    if lead:
                        log(done, last, len(window) / dt)
                    bar.set_postfix(loss=f"{np.mean(last['loss']):.4f}")
                    window, t_window = [], time.perf_counter()
                if ckpt is not None and at(config.checkpoint_every):
                    save(done)
                if eval_fn is not None and at(config.eval_every):
                    with jax.transfer_guard("allow"):
                        ev = {f"eval/{k}": float(v)
                              for k, v in eval_fn(init.model_def.bind(state.params), done).items()}
                    if lead:
                        metrics_out.write(done, **ev)
                        if board is not None:
                            board.write(done, ev)
                    last.update(ev)
                bar.update(n)
                profiler.after(done, state)
                step_times.append(time.perf_counter() - t0)
                if done - n == start:  # compiled and ran once: time the rest
                    jax.block_until_ready(state)
                    t_loop, cpu_loop, timed_from = time.perf_counter(), time.process_time(), done
                if done < config.steps and preemption.reached(done):
                    # every process stops at this same step: save it (data state included)
                    if pending is not None:
                        window.extend(check(pending))
                        pending = None
                    if ckpt is not None and not at(config.checkpoint_every):
                        save(done)
                    preempted_at = done
                    break
            if pending is not None:
                window.extend(check(pending))
        t_end, cpu_end = time.perf_counter(), time.process_time()
    finally:
        bar.close()
        profiler.stop()
        if board is not None:
            board.close()
        if ckpt is not None:
            ckpt.close()  # waits for the last async save
    t_closed = time.perf_counter()
    end = preempted_at if preempted_at is not None else config.steps
    timed = end - timed_from

    summary = {
        "steps": config.steps,
        "resumed_from": start,
        "preempted_at": preempted_at,  # the step saved on SIGTERM; rerun to resume from it
        "mesh": describe(mesh),
        "processes": jax.process_count(),
        "data_crc": crc,
        "median_step_s": float(np.median(step_times)) / per_call if step_times else None,
        # wall time per step after the first (compile) call, metrics and checkpoint saves
        # included; the wait for the last save to reach the disk is ``final_wait_s``
        "mean_step_s": (t_end - t_loop) / timed if timed > 0 else None,
        "mean_step_cpu_s": (cpu_end - cpu_loop) / timed if timed > 0 else None,  # all threads
        "tokens_per_sec": (tokens_per_step * timed / (t_end - t_loop)
                           if tokens_per_step and timed > 0 else None),
        "final_wait_s": t_closed - t_end,
        **{f"final_{k}": np.asarray(v).tolist() for k, v in last.items()},
    }
    return TrainResult(state=state, model_def=init.model_def, init=init, summary=summary,
                       step_times=step_times)


def _pretrained_state(init: ShardedInit, tx: optax.GradientTransformation,
                      params: dict) -> TrainState:
    """A step-0 :class:`TrainState` from loaded ``params``, each placed on its sharding."""
    want = init.abstract.params
    if jax.tree.structure(params) != jax.tree.structure(want):
        raise ValueError("Task.init_params: the loaded parameters' tree differs from the "
                         f"model's: {jax.tree.structure(params)} vs {jax.tree.structure(want)}")
    for name, p, a in zip(leaf_names(params), jax.tree.leaves(params), jax.tree.leaves(want),
                          strict=True):
        if tuple(np.shape(p)) != tuple(a.shape):
            raise ValueError(f"Task.init_params: {name} has shape {tuple(np.shape(p))}, the "
                             f"model needs {tuple(a.shape)}")
    def place(p, a):
        # device arrays (a sharded load) are cast where they are; host arrays go straight from
        # the host to their shards, never whole onto one device first
        p = p.astype(a.dtype) if isinstance(p, jax.Array) else np.asarray(p, a.dtype)
        return jax.device_put(p, a.sharding)

    with jax.transfer_guard("allow"):
        params = jax.tree.map(place, params, want)
        opt_state = jax.jit(tx.init, out_shardings=init.shardings.opt_state)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), init.shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)

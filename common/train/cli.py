"""``headlab train <target> [--config ARG] [--mesh data=2,tensor=4] [--workdir DIR] [--set k=v ...]
[--profile START:STEPS]``.

A target is ``projects.<target>.train``, a module with ``get_config(arg) -> ConfigDict`` (or a
``projects.<target>.configs.default`` that has it) and
``build(config, workdir) -> (Task, optax tx, dataset, TrainConfig, eval_fn)``; ``lm``
(:mod:`projects.lm.train`) is the reference one. ``--set`` is parsed by :mod:`common.configs`.
Rerunning the same command with the same ``--workdir`` resumes from its newest intact
checkpoint; that includes a run stopped by SIGTERM (a preemption), which saves the step every
process agreed on and exits 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import pathlib

from common.configs import ConfigError, apply_overrides, find_train_targets


def target_module(target: str):
    """The module implementing ``target``: ``projects.<target>.train``.

    It must define ``build(config, workdir)`` and ``get_config(arg)`` (a project's
    ``get_config`` may instead live in ``projects.<target>.configs.default``).
    """
    if not target.isidentifier():
        raise ConfigError(f"unknown train target {target!r}: a target is a folder name under "
                          f"projects/; train targets: {', '.join(find_train_targets()) or '(none)'}")
    name = f"projects.{target}.train"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in (name, f"projects.{target}", "projects"):
            raise
        raise ConfigError(f"unknown train target {target!r}: no module {name}; train targets: "
                          f"{', '.join(find_train_targets()) or '(none)'}") from None
    if not hasattr(module, "build"):
        raise ConfigError(f"train target {target!r}: {name} has no build(config, workdir) -> "
                          "(Task, tx, dataset, TrainConfig, eval_fn); see projects/lm/train.py")
    if not hasattr(module, "get_config"):
        try:
            defaults = importlib.import_module(f"projects.{target}.configs.default")
        except ModuleNotFoundError:
            defaults = None
        if defaults is None or not hasattr(defaults, "get_config"):
            raise ConfigError(f"train target {target!r}: no get_config in {name} or "
                              f"projects.{target}.configs.default")
        module.get_config = defaults.get_config
    return module


def train_main(target: str, mesh: str | None, workdir, overrides: list[str], *,
               config_arg: str | None = None, profile: str | None = None,
               say=print) -> dict:
    """Run (or resume) training of ``target``; returns the summary (also ``summary.json``).

    Args:
      target: ``lm`` or another project with a ``train`` module defining ``build``.
      mesh: ``"data=2,tensor=4"`` (``dcn:data=2`` for multi-slice); None = data parallel.
      workdir: run directory; None gives ``runs/train-<target>/<UTC timestamp>``.
      overrides: ``["train.steps=100", ...]``.
      config_arg: the argument of the target's ``get_config`` (``lm``: ``quick``, ``finetune``).
      profile: ``"START:STEPS"``: trace those steps with jax.profiler into ``<workdir>/profile``.
      say: where process 0's lines for the user go (TensorBoard, preemption).
    """
    from common.sharding.distributed import maybe_initialize

    maybe_initialize()
    import jax

    from common.rundir import RunDir
    from common.sharding import make_mesh
    from common.train.loop import train
    from common.train.watch import parse_profile

    window = parse_profile(profile)
    module = target_module(target)
    config = module.get_config(config_arg)
    apply_overrides(config, overrides)
    if workdir is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        workdir = pathlib.Path("runs") / f"train-{target}" / stamp
    rd = RunDir(workdir)
    lead = jax.process_index() == 0
    if lead:
        rd.write_config({"target": target, "config_arg": config_arg, "mesh": mesh,
                         **config.to_dict()})
    mesh_obj = make_mesh(mesh)
    task, tx, dataset, train_config, eval_fn = module.build(config, rd.root)
    if window is not None:
        train_config = dataclasses.replace(train_config, profile=window)
    if lead and train_config.tensorboard:
        say(f"TensorBoard: tensorboard --logdir {rd.root / 'tensorboard'}")
    result = train(task, tx, dataset, train_config, mesh_obj, rd.root, eval_fn=eval_fn)
    summary = {"target": target, **result.summary}
    if lead:
        rd.write_summary(summary)
        if summary["preempted_at"] is not None:
            say(f"preempted (SIGTERM): saved step {summary['preempted_at']} of "
                f"{summary['steps']} in {rd.root / 'checkpoints'}; rerun the same command to "
                "resume")
        if window is not None:
            say(f"profile of steps {window[0]}..{sum(window) - 1}: {rd.root / 'profile'}")
    return summary


def restore_run(workdir, mesh: str | None = None, step: int | None = None):
    """Load a run's checkpoint onto ``mesh`` (default: all local devices, data parallel).

    Reads ``config.json`` written by :func:`train_main`, rebuilds the target's model and
    optimiser abstractly and restores the newest intact (or the given) step.

    Returns:
      ``(step, TrainState, data_state, ShardedInit)``; raises FileNotFoundError without a
      checkpoint.
    """
    import json

    from common.sharding import make_mesh, sharded_init
    from common.train.orbax_checkpoint import Checkpointer

    workdir = pathlib.Path(workdir)
    saved = json.loads((workdir / "config.json").read_text())
    target = saved.pop("target")
    config_arg = saved.pop("config_arg", None)
    saved.pop("mesh", None)
    module = target_module(target)
    config = module.get_config(config_arg)
    config.update_from_flattened_dict(_flatten(saved))
    task, tx, _, _, _ = module.build(config, workdir)
    init = sharded_init(task.make_model, tx, make_mesh(mesh))
    found = Checkpointer(workdir / "checkpoints").restore(init.abstract, step=step)
    if found is None:
        raise FileNotFoundError(f"no intact checkpoint under {workdir / 'checkpoints'}")
    s, state, data_state = found
    return s, state, data_state, init


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

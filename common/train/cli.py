"""``headlab train <target> [--mesh data=2,tensor=4] [--workdir DIR] [--set k=v ...]``.

A target is a module with ``get_config(arg) -> ConfigDict`` and
``build(config, workdir) -> (Task, optax tx, dataset, TrainConfig, eval_fn)``:
built-in ``lm`` (:mod:`common.train.lm`), or ``projects.<target>.train`` for a trainable
project. Rerunning the same command with the same ``--workdir`` resumes from its newest intact
checkpoint.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import pathlib

import ml_collections

BUILTIN = {"lm": "common.train.lm"}


def target_module(target: str):
    """The module implementing ``target`` (built-in or ``projects.<target>.train``).

    It must define ``build(config, workdir)`` and ``get_config(arg)`` (a project's
    ``get_config`` may instead live in ``projects.<target>.configs.default``).
    """
    name = BUILTIN.get(target, f"projects.{target}.train")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in (name, f"projects.{target}"):
            raise
        raise ValueError(f"unknown train target {target!r}: no built-in and no module {name} "
                         f"(built-ins: {sorted(BUILTIN)})") from None
    if not hasattr(module, "build"):
        raise ValueError(f"train target {target!r}: {name} has no build(config, workdir) -> "
                         "(Task, tx, dataset, TrainConfig, eval_fn); see common/train/lm.py")
    if not hasattr(module, "get_config"):
        try:
            defaults = importlib.import_module(f"projects.{target}.configs.default")
        except ModuleNotFoundError:
            defaults = None
        if defaults is None or not hasattr(defaults, "get_config"):
            raise ValueError(f"train target {target!r}: no get_config in {name} or "
                             f"projects.{target}.configs.default")
        module.get_config = defaults.get_config
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Apply ``key.sub=value`` strings; the value is parsed to the existing field's type."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parent, leaf = config, key
        if "." in key:
            path, leaf = key.rsplit(".", 1)
            for part in path.split("."):
                if part not in parent:
                    raise KeyError(f"--set {item!r}: no config field {part!r} in {key!r}")
                parent = parent[part]
        if leaf not in parent:
            raise KeyError(f"--set {item!r}: no config field {key!r}")
        old = parent[leaf]
        if isinstance(old, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {item!r}: {key} is a bool")
            value = raw.lower() in ("true", "1")
        elif isinstance(old, (int, float)):
            try:
                value = type(old)(raw)
            except ValueError:
                raise ValueError(f"--set {item!r}: {key} is a {type(old).__name__}") from None
        elif isinstance(old, str):
            value = raw
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        parent[leaf] = value


def train_main(target: str, mesh: str | None, workdir, overrides: list[str]) -> dict:
    """Run (or resume) training of ``target``; returns the summary (also ``summary.json``).

    Args:
      target: ``lm`` or a project with a ``train`` module.
      mesh: ``"data=2,tensor=4"`` (``dcn:data=2`` for multi-slice); None = data parallel.
      workdir: run directory; None gives ``runs/train-<target>/<UTC timestamp>``.
      overrides: ``["train.steps=100", ...]``.
    """
    from common.sharding.distributed import maybe_initialize

    maybe_initialize()
    import jax

    from common.rundir import RunDir
    from common.sharding import make_mesh
    from common.train.loop import train

    module = target_module(target)
    config = module.get_config(None)
    apply_overrides(config, overrides)
    if workdir is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        workdir = pathlib.Path("runs") / f"train-{target}" / stamp
    rd = RunDir(workdir)
    if jax.process_index() == 0:
        rd.write_config({"target": target, "mesh": mesh, **config.to_dict()})
    mesh_obj = make_mesh(mesh)
    task, tx, dataset, train_config, eval_fn = module.build(config, rd.root)
    result = train(task, tx, dataset, train_config, mesh_obj, rd.root, eval_fn=eval_fn)
    summary = {"target": target, **result.summary}
    if jax.process_index() == 0:
        rd.write_summary(summary)
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
    from common.train.checkpoint import Checkpointer

    workdir = pathlib.Path(workdir)
    saved = json.loads((workdir / "config.json").read_text())
    target = saved.pop("target")
    saved.pop("mesh", None)
    module = target_module(target)
    config = module.get_config(None)
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

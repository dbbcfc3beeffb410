"""Populations: many small models trained side by side in one compiled step.

A sweep over seeds and configurations (icl_regression: H = 1, 2, 4, 8 heads, activation
ablations, multitask and linear-attention models, each over seeds) trains as one *population*
of *groups*. Group ``g`` holds ``M_g`` models of one shape; their parameters are stacked on a
leading model axis, ``params[g.name]`` leaves ``[M_g, ...]``, with the logical axis name
``models`` (:data:`common.sharding.DEFAULT_RULES` map it onto the ``data`` mesh axis where the
axis size divides ``M_g``, else the group is replicated: each device trains its share of the
models). ``Task.for_population`` hands a population to :func:`common.train.train`.

Per model, not per population:

* the loss is a vector ``[M]`` (``M = Σ_g M_g``, groups in order); the gradient is that of its
  sum, so each model gets exactly its own gradient;
* ``grad_norm`` is reported per model ``[M]``: a norm over the whole population mixes models;
* the non-finite guard checks each (model, parameter) and each model's loss, and the error
  names the model. One bad model skips the update of all (the population stays at one step, so
  every checkpoint holds every model at the same step) and the loop stops.

The optimiser is one optax transform over the stacked tree. For elementwise transforms (sgd,
adam, adamw, their schedules) this equals each model with its own optimiser. A transform that
reads a global statistic (``clip_by_global_norm``) would couple the models (it clips by the
population's norm): don't use one with a population.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MODELS = "models"  # logical name of the leading model axis
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Group:
    """Models of one shape trained side by side (one seed or configuration each).

    Attributes:
      name: group name; its parameters are ``params[name]`` with leaves ``[M, ...]``.
      models: one name per model, in model-axis order (``M = len(models)``).
      init: ``m -> params`` of model ``m`` alone (nested dict of arrays, no model axis).
      loss: ``(params, batch) -> scalar`` loss of one model on its own batch (no model axis).
      data: the field of the step's batch this group trains on; its leaves are ``[M, ...]`` and
        model ``m`` trains on entry ``m``. Groups may share a field (the same examples).
      labels: per model, extra fields of its metrics rows (e.g. ``{"seed": 3}``).
      probe: ``params -> {name: array}`` of one model: diagnostics written in its rows.
    """

    name: str
    models: tuple[str, ...]
    init: Callable[[int], PyTree]
    loss: Callable[[PyTree, Any], jax.Array]
    data: str
    labels: tuple[dict, ...] = ()
    probe: Callable[[PyTree], dict[str, jax.Array]] | None = None


def over_models(fn: Callable) -> Callable:
    """``jax.vmap(fn)`` over the leading model axis, or ``fn`` on the one model when it is 1.

    A model axis of size 1 costs nothing in math but slows XLA:CPU's loops by 1.3x (one-seed
    runs of ``tools/bench_icl.py``); dropping it makes a one-model group run the plain step.
    """
    vfn = jax.vmap(fn)

    def run(*args):
        if jax.tree.leaves(args)[0].shape[0] != 1:
            return vfn(*args)
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return run


def _module(tree: PyTree) -> nnx.Dict | nnx.Param:
    if isinstance(tree, dict):
        return nnx.Dict({k: _module(v) for k, v in tree.items()})
    return nnx.Param(tree, out_sharding=(MODELS,) + (None,) * (tree.ndim - 1),
                     eager_sharding=False)


def _per_model(x: jax.Array) -> jax.Array:
    """``[M, ...] -> [M, n]``: each model's entries of one stacked leaf."""
    return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Population:
    """Groups of models trained together; see the module docstring."""

    groups: tuple[Group, ...]

    def __post_init__(self):
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"Population: repeated group names {names}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"Population: repeated model names {self.models}")
        for g in self.groups:
            if g.labels and len(g.labels) != len(g.models):
                raise ValueError(f"Population group {g.name!r}: {len(g.labels)} labels for "
                                 f"{len(g.models)} models")

    @property
    def models(self) -> tuple[str, ...]:
        """Every model's name, groups in order (the order of every per-model vector)."""
        return tuple(m for g in self.groups for m in g.models)

    def make_model(self) -> nnx.Dict:
        """``{group: {leaf: Param [M_g, ...]}}`` with the logical axis ``models`` first."""
        return nnx.Dict({g.name: _module(stack([g.init(m) for m in range(len(g.models))]))
                         for g in self.groups})

    def loss_fn(self, module: nnx.Dict, batch: dict) -> tuple[jax.Array, dict]:
        """``(losses [M], {})``: each model's loss on its entry of its group's batch field."""
        params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        return jnp.concatenate([over_models(g.loss)(params[g.name], batch[g.data])
                                for g in self.groups]), {}

    def grad_norms(self, grads: dict) -> jax.Array:
        """Global norm of each model's gradient, ``[M]``."""
        return jnp.concatenate([
            jnp.sqrt(sum(jnp.sum(jnp.square(_per_model(x)), axis=1)
                         for x in jax.tree.leaves(grads[g.name])))
            for g in self.groups])

    def finite(self, grads: dict, losses: jax.Array) -> jax.Array:
        """bool flags: per group, per leaf, per model (:meth:`flag_names` order), then ``[M]`` losses."""
        return jnp.concatenate(
            [jnp.all(jnp.isfinite(_per_model(x)), axis=1)
             for g in self.groups for x in jax.tree.leaves(grads[g.name])]
            + [jnp.isfinite(losses)])

    def flag_names(self, leaf_names: Callable[[PyTree], list[str]], params: dict) -> list[str]:
        """``"model/leaf"`` names of :meth:`finite`'s flags (``"model/loss"`` last)."""
        return ([f"{m}/{leaf}" for g in self.groups for leaf in leaf_names(params[g.name])
                 for m in g.models] + [f"{m}/loss" for m in self.models])

    def probe(self, params: dict) -> dict[str, dict[str, jax.Array]]:
        """``{group: {name: [M_g, ...]}}`` of the groups that have a probe (jittable)."""
        return {g.name: over_models(g.probe)(params[g.name]) for g in self.groups if g.probe}

    def rows(self, metrics: dict[str, Any], probed: dict[str, dict[str, np.ndarray]]
             ) -> list[dict]:
        """One metrics row per model: its name, labels, entries of ``[M]`` metrics, its probe.

        ``metrics`` values are scalars (shared by all rows) or ``[M]`` vectors.
        """
        out, i = [], 0
        for g in self.groups:
            for m, name in enumerate(g.models):
                row = {"model": name, **(g.labels[m] if g.labels else {})}
                for k, v in metrics.items():
                    row[k] = v[i] if np.ndim(v) else v
                row.update({k: np.asarray(v[m]) for k, v in probed.get(g.name, {}).items()})
                out.append(row)
                i += 1
        return out


def stack(per_model: Sequence[PyTree]) -> PyTree:
    """Stack per-model trees (parameters, batches, keys) on a new leading model axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *per_model)

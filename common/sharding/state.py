"""Parameters and optimiser state created already sharded (``jax.jit(init, out_shardings=...)``).

Nothing is materialised on one device first: the model is traced abstractly
(:func:`flax.nnx.eval_shape`) to read shapes and logical axis names, the shardings are derived
from the rules, and the real initialisation runs under ``jax.jit`` with those shardings as
``out_shardings`` so that each device computes only its own shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.sharding.rules import (
    DEFAULT_RULES,
    Rules,
    named_shardings,
    opt_state_specs,
    param_specs,
)


@struct.dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: int32 scalar, number of optimiser steps taken.
      params: pure nested dict of parameter arrays (``nnx.to_pure_dict`` layout).
      opt_state: the optax state for ``params``.
    """

    step: jax.Array
    params: dict
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of an NNX model: graph definition and non-parameter state.

    ``bind(params)`` rebuilds the module from a pure parameter dict (inside or outside jit).
    """

    graphdef: Any
    rest: Any

    def bind(self, params: dict) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)


@dataclasses.dataclass(frozen=True)
class ShardedInit:
    """What :func:`sharded_init` prepares: the recipe, its shapes and its shardings.

    Attributes:
      model_def: graphdef + non-parameter state of the model (replicated).
      abstract: a :class:`TrainState` of ``jax.ShapeDtypeStruct`` carrying the shardings (the
        restore target for checkpoints).
      specs: a :class:`TrainState` of PartitionSpecs.
      shardings: a :class:`TrainState` of NamedShardings on ``mesh``.
      mesh: the mesh.
      create: ``() -> TrainState``, the jitted sharded initialisation.
    """

    model_def: ModelDef
    abstract: TrainState
    specs: TrainState
    shardings: TrainState
    mesh: Mesh
    create: Callable[[], TrainState]


def sharded_init(
    make_model: Callable[[], nnx.Module],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> ShardedInit:
    """Prepare the sharded :class:`TrainState` of ``make_model()`` trained with ``tx``.

    Args:
      make_model: builds the NNX model with its own fixed ``nnx.Rngs`` (so that it is a pure
        function of nothing: the same parameters on every process).
      tx: the optax optimiser.
      mesh: the device mesh (see :func:`common.sharding.make_mesh`).
      rules: logical axis -> mesh axis rules.
    """
    abstract_model = nnx.eval_shape(make_model)
    _, abs_params, _ = nnx.split(abstract_model, nnx.Param, ...)
    p_specs = param_specs(abs_params, rules, mesh)
    abs_pure = nnx.to_pure_dict(abs_params)
    abs_opt = jax.eval_shape(tx.init, abs_pure)
    specs = TrainState(step=PartitionSpec(), params=p_specs,
                       opt_state=opt_state_specs(abs_opt, p_specs))
    shardings = named_shardings(mesh, specs)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init():
        model = make_model()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        pure = nnx.to_pure_dict(params)
        return TrainState(jnp.zeros((), jnp.int32), pure, tx.init(pure)), rest

    init_jit = jax.jit(init, out_shardings=(shardings, replicated))
    # The graph definition and the (small) non-parameter state: computed once, replicated.
    graphdef = nnx.split(abstract_model, nnx.Param, ...)[0]
    abs_state, abs_rest = jax.eval_shape(init)
    rest = init_jit()[1] if jax.tree.leaves(abs_rest) else abs_rest
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_state, shardings)
    return ShardedInit(
        model_def=ModelDef(graphdef, rest),
        abstract=abstract,
        specs=specs,
        shardings=shardings,
        mesh=mesh,
        create=lambda: init_jit()[0],
    )

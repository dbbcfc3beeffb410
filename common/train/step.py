"""The jitted training step: gradient accumulation, mixed precision, a non-finite guard.

``make_train_step`` returns ``step(state, batch) -> (state, metrics, finite)``:

* the batch (a dict of ``[global_batch, ...]`` arrays) is split into ``grad_accum``
  micro-batches (micro-batch ``i`` = rows ``i::grad_accum``, so each device keeps its rows) and
  the gradients of the mean loss are averaged with ``lax.scan``;
* mixed precision: float32 master parameters are cast to ``compute_dtype`` for the forward and
  backward pass; the gradients, the optimiser and the parameters stay in float32;
* the guard: ``finite`` is a bool vector, one entry per gradient leaf plus one for the loss; if
  any is False the update is not applied (params and optimiser state stay as they were) and the
  loop stops, naming the step and the leaf;
* a population (:mod:`common.train.population`): the loss is one value per model ``[M]``, the
  gradient that of their sum; ``grad_norm`` is ``[M]`` and ``finite`` has one entry per
  (model, leaf) plus one per model's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common.models.activation_sharding import Placement, activation_sharding
from common.sharding.state import ModelDef, TrainState
from common.train.population import Population

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict[str, jax.Array]]]


def cast_floating(tree: Any, dtype) -> Any:
    """Cast the floating-point leaves of ``tree`` to ``dtype``."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def leaf_names(tree: Any) -> list[str]:
    """``"layers/0/attn/q_kernel"``-style names of the leaves of ``tree``, in flatten order."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        out.append("/".join(parts))
    return out


def make_train_step(
    model_def: ModelDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    grad_accum: int = 1,
    compute_dtype: Any = None,
    device_data: Callable[[jax.Array], dict] | None = None,
    batch_shardings: Any = None,
    population: Population | None = None,
    placement: Placement | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict, jax.Array]]:
    """The (unjitted) train step; see the module docstring.

    Args:
      model_def: rebuilds the model from params (``ShardedInit.model_def``).
      loss_fn: ``(model, batch) -> (mean loss, {name: scalar})``; ``[M]`` losses for a population.
      tx: the optax optimiser.
      grad_accum: micro-batches per step (must divide the global batch).
      compute_dtype: e.g. ``jnp.bfloat16``; None computes in the parameters' dtype.
      device_data: if given, the step ignores its ``batch`` argument (pass None) and makes the
        batch on device as ``device_data(state.step)``, constrained to ``batch_shardings``.
      population: the models of ``model_def`` when it is a population (``loss_fn`` then returns
        the loss of each model, ``[M]``).
      placement: where the model's named activations go
        (:func:`common.sharding.activation_placement`); None leaves them to XLA.
    """

    def loss_of(params, batch):
        if compute_dtype is not None:
            params = cast_floating(params, compute_dtype)
        loss, aux = loss_fn(model_def.bind(params), batch)
        loss = loss.astype(jnp.float32)
        return jnp.sum(loss), (loss, {k: v.astype(jnp.float32) for k, v in aux.items()})

    value_and_grad = jax.value_and_grad(loss_of, has_aux=True)

    def grad_fn(params, batch):
        """``(loss, aux, grads)``; ``loss`` as ``loss_fn`` returns it (a scalar or ``[M]``)."""
        (_, (loss, aux)), grads = value_and_grad(params, batch)
        return loss, aux, grads

    def step(state: TrainState, batch: dict | None):
        with activation_sharding(placement):
            return placed_step(state, batch)

    def placed_step(state: TrainState, batch: dict | None):
        if device_data is not None:
            batch = device_data(state.step)
            if batch_shardings is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_shardings)
        if grad_accum == 1:
            loss, aux, grads = grad_fn(state.params, batch)
        else:
            def split(x):
                if x.shape[0] % grad_accum:
                    raise ValueError(f"batch of {x.shape[0]} rows does not split into "
                                     f"{grad_accum} micro-batches")
                return x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)

            micro = jax.tree.map(split, batch)

            def body(carry, mb):
                return jax.tree.map(jnp.add, carry, grad_fn(state.params, mb)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(grad_fn, state.params, first))
            (loss, aux, grads), _ = jax.lax.scan(body, zeros, micro)
            loss, aux, grads = jax.tree.map(lambda x: x / grad_accum, (loss, aux, grads))
        if population is None:
            finite = jnp.stack(
                [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] + [jnp.isfinite(loss)])
            grad_norm = optax.tree.norm(grads)
        else:
            finite, grad_norm = population.finite(grads, loss), population.grad_norms(grads)
        ok = jnp.all(finite)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        new_state = TrainState(
            step=state.step + ok.astype(state.step.dtype),
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
        return new_state, metrics, finite

    return step

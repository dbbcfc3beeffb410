"""Sharding constraints on activations, by logical axis names; off unless a caller turns them on.

Parameters carry logical axis names and are placed by the rules of :mod:`common.sharding`;
activations are placed by XLA's propagation, which on a ZeRO-3 mesh (batch and parameters both
over ``fsdp``) may keep a large activation unsplit (the logits ``[batch, seq, vocab]`` of an 8B
model are 67 GB per device that way). The model therefore names its large activations
(the residual stream entering each layer ``("batch", "seq", None)``, the logits
``("batch", "seq", "vocab")``) through :func:`constrain`, which does nothing until a caller
that knows the mesh and the rules (the train step) installs a placement with
:func:`activation_sharding` (the ``nn.logical_axis_rules`` pattern of Flax/MaxText). The
models import nothing of ``common.sharding``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax

Placement = Callable[[Sequence[str | None], Sequence[int]], jax.sharding.Sharding | None]
"""``(logical names, shape) -> sharding`` (or None: leave the array alone)."""

_PLACEMENT: contextvars.ContextVar[Placement | None] = contextvars.ContextVar(
    "headlab_activation_placement", default=None)


@contextlib.contextmanager
def activation_sharding(placement: Placement | None) -> Iterator[None]:
    """Within the block (while tracing), :func:`constrain` places activations by
    ``placement``."""
    token = _PLACEMENT.set(placement)
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``x`` constrained to the sharding its logical ``names`` (one per axis) map to, when a
    placement is installed; ``x`` itself otherwise."""
    placement = _PLACEMENT.get()
    if placement is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape "
                         f"{x.shape}")
    sharding = placement(tuple(names), tuple(x.shape))
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

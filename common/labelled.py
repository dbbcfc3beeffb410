"""Labelled arrays: an array with a name for every axis (and optional coordinates).

Results of ``common.interp`` and the activation cache are never bare tensors whose axis order
must be guessed: a ``[layer, head]`` score comes back as ``Labelled(values, axes=("layer", "head"))``. A
:class:`Labelled` is a JAX pytree (the values are its only leaf), so it passes through
``jax.jit`` and ``jax.vmap`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class Labelled:
    """An array with named axes.

    Attributes:
      values: the array (``jax.Array`` or numpy).
      axes: one name per axis, e.g. ``("layer", "head")``.
      coords: optional labels along some axes, e.g. ``{"layer": (0, 3, 5)}`` when only some
        layers were captured. Axes without coordinates are indexed ``0 .. n-1``.
    """

    __slots__ = ("values", "axes", "coords")

    def __init__(self, values: Any, axes: Sequence[str], coords: dict | None = None):
        axes = tuple(axes)
        shape = np.shape(values)
        if len(axes) != len(shape):
            raise ValueError(f"Labelled: {len(axes)} axis names {axes} for an array of {shape}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"Labelled: repeated axis name in {axes}")
        coords = {k: tuple(v) for k, v in (coords or {}).items()}
        for name, labels in coords.items():
            if name not in axes:
                raise ValueError(f"Labelled: coordinates for unknown axis {name!r} (axes {axes})")
            if len(labels) != shape[axes.index(name)]:
                raise ValueError(
                    f"Labelled: {len(labels)} coordinates for axis {name!r} of size "
                    f"{shape[axes.index(name)]}"
                )
        self.values = values
        self.axes = axes
        self.coords = coords

    # pytree protocol: the values are the only leaf; names and coordinates are static.
    def tree_flatten(self):
        return (self.values,), (self.axes, tuple(sorted(self.coords.items())))

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.values = children[0]
        obj.axes = aux[0]
        obj.coords = dict(aux[1])
        return obj

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.values))

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def sizes(self) -> dict[str, int]:
        """``{axis name: size}``."""
        return dict(zip(self.axes, self.shape, strict=True))

    def __array__(self, dtype=None, copy=None):  # noqa: ARG002 - numpy protocol
        out = np.asarray(self.values)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape, strict=True))
        return f"Labelled[{dims}]({self.values!r})"

    def axis(self, name: str) -> int:
        """Position of the axis called ``name``."""
        if name not in self.axes:
            raise KeyError(f"no axis {name!r}; axes are {self.axes}")
        return self.axes.index(name)

    def labels(self, name: str) -> tuple:
        """Coordinates along axis ``name`` (``0 .. n-1`` when none were given)."""
        if name in self.coords:
            return self.coords[name]
        return tuple(range(self.shape[self.axis(name)]))

    def sel(self, **where: Any) -> Labelled | jax.Array:
        """Select by coordinate, e.g. ``scores.sel(layer=3, head=1)``; drops selected axes.

        Returns a bare array when every axis is selected.
        """
        values, axes, coords = self.values, list(self.axes), dict(self.coords)
        for name, label in where.items():
            labels = self.labels(name)
            if label not in labels:
                raise KeyError(f"axis {name!r} has no coordinate {label!r}; it has {labels}")
            i = axes.index(name)
            values = jnp.take(values, labels.index(label), axis=i) if isinstance(
                values, jax.Array) else np.take(values, labels.index(label), axis=i)
            axes.pop(i)
            coords.pop(name, None)
        return Labelled(values, axes, coords) if axes else values

    def transpose(self, *axes: str) -> Labelled:
        """The same data with the axes in the given order."""
        if sorted(axes) != sorted(self.axes):
            raise ValueError(f"transpose: {axes} is not a permutation of {self.axes}")
        perm = [self.axes.index(a) for a in axes]
        vals = self.values.transpose(perm)
        return Labelled(vals, axes, self.coords)

    def map(self, fn) -> Labelled:
        """Apply an elementwise function to the values, keeping names and coordinates."""
        return Labelled(fn(self.values), self.axes, self.coords)

    def top(self, k: int = 5, *, largest: bool = True) -> list[tuple[tuple, float]]:
        """The ``k`` largest (or smallest) entries as ``[((coord, ...), value), ...]``."""
        flat = np.asarray(self.values).reshape(-1)
        order = np.argsort(-flat if largest else flat, kind="stable")[:k]
        out = []
        for i in order:
            idx = np.unravel_index(i, self.shape)
            out.append((tuple(self.labels(a)[j] for a, j in zip(self.axes, idx, strict=True)),
                        float(flat[i])))
        return out

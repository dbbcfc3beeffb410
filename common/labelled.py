"""Labelled arrays: an array with a name for every axis (and optional coordinates).

Results of ``common.interp``, the weight views and the activation cache's stacks are never bare
tensors whose axis order must be guessed: a ``[layer, head]`` score comes back as
``Labelled(values, axes=("layer", "head"))``. A :class:`Labelled` is a JAX pytree (the values are
its only leaf), so it passes through ``jax.jit`` and ``jax.vmap`` unchanged, and it is usable
wherever an array is: ``np.asarray(x)``, ``jnp.exp(x)`` (``__array__`` / ``__jax_array__``),
``x[3, 1]``, ``x - y``, ``x @ w``, ``x.sum("head")``, ``float(x.sel(layer=3, head=1))``.

**Indexing rule** (``x[...]``; one rule for every axis): an integer, or a list of integers, on an
axis is a *coordinate* of that axis, never a position. Axes without coordinates have the
coordinates ``0 .. n-1``, so there (and on full ``layer`` stacks, whose coordinates are ``0 ..
n_layers-1``) this is plain numpy indexing; on a stack of chosen layers (``OV(model,
layers=[23])``) ``x[23]`` is layer 23 and ``x[0]`` raises a ``KeyError`` naming the layers held.
A negative integer ``-k`` counts back from the end of the axis the coordinates were taken from:
where the axis records that extent (``layer`` axes of model views and cache stacks record the
model's layer count) it is the coordinate ``extent - k`` (``-1`` is the model's last layer,
whichever layers were kept), otherwise the position ``-k`` from the end, as in numpy.
Slices, ``...`` and boolean masks are positional, as in numpy, and keep the coordinates of what
they keep. :meth:`sel` selects by name (``x.sel(layer=23)``) under the same rule, and
:meth:`isel` by position. Both always return a :class:`Labelled` (0-d when every axis is
selected; ``float(x)`` or ``x.item()`` reads it).

**Arithmetic** (``+ - * / ** // %``, comparisons, ``@``) keeps the labels where they mean
something: two :class:`Labelled` operands are aligned by axis *name* (shared axes must have the
same coordinates; the result has the left operand's axes, then the right one's new axes); a
scalar or an array that broadcasts into the :class:`Labelled`'s shape keeps its labels; any other
shape gives a bare array. ``a @ b`` contracts ``a``'s last axis with ``b``'s second to last
(numpy's rule); the result keeps ``a``'s leading names and ``b``'s last, and a repeated name
becomes ``name_in`` / ``name_out`` (``W_V @ W_O`` is ``[layer, head, d_model_in, d_model_out]``,
like ``OV``).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_jax(x) -> bool:
    return isinstance(x, jax.Array)


def _take(values, index, axis):
    if _is_jax(values):
        return jnp.take(values, index, axis=axis)
    return np.take(values, index, axis=axis)


@jax.tree_util.register_pytree_node_class
class Labelled:
    """An array with named axes (see the module docstring for indexing and arithmetic).

    Attributes:
      values: the array (``jax.Array`` or numpy).
      axes: one name per axis, e.g. ``("layer", "head")``.
      coords: optional labels along some axes, e.g. ``{"layer": (0, 3, 5)}`` when only some
        layers were captured. Axes without coordinates are labelled ``0 .. n-1``.
      extents: optional ``{axis: n}``: the size of the axis the coordinates were chosen from
        (the model's layer count for ``layer``); negative integers count back from it.
    """

    __slots__ = ("values", "axes", "coords", "extents")
    __array_priority__ = 100  # numpy defers binary operators to ours

    def __init__(self, values: Any, axes: Sequence[str], coords: dict | None = None,
                 extents: dict | None = None):
        if isinstance(values, Labelled):
            values = values.values
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
        extents = {k: int(v) for k, v in (extents or {}).items() if k in axes}
        self.values = values
        self.axes = axes
        self.coords = coords
        self.extents = extents

    # pytree protocol: the values are the only leaf; names, coordinates, extents are static.
    def tree_flatten(self):
        return (self.values,), (self.axes, tuple(sorted(self.coords.items())),
                                tuple(sorted(self.extents.items())))

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.values = children[0]
        obj.axes = aux[0]
        obj.coords = dict(aux[1])
        obj.extents = dict(aux[2])
        return obj

    def _like(self, values, axes=None, coords=None, extents=None) -> Labelled:
        """A plain :class:`Labelled` with new values (same names unless given)."""
        axes = self.axes if axes is None else tuple(axes)
        coords = self.coords if coords is None else coords
        extents = self.extents if extents is None else extents
        return Labelled(values, axes, {k: v for k, v in coords.items() if k in axes},
                        {k: v for k, v in extents.items() if k in axes})

    # ------------------------------------------------------------------ array protocol

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.values))

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def sizes(self) -> dict[str, int]:
        """``{axis name: size}``."""
        return dict(zip(self.axes, self.shape, strict=True))

    @property
    def T(self) -> Labelled:  # noqa: N802 - numpy's name
        """The axes reversed."""
        return self.transpose(*reversed(self.axes))

    def __array__(self, dtype=None, copy=None):  # noqa: ARG002 - numpy protocol
        out = np.asarray(self.values)
        return out if dtype is None else out.astype(dtype)

    def __jax_array__(self):
        return jnp.asarray(self.values)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """numpy ufuncs (``np.exp(x)``, ``np.add(a, x)``) on the values; the labels are kept when
        the result has this array's shape."""
        raw = [np.asarray(x.values) if isinstance(x, Labelled) else x for x in inputs]
        out = getattr(ufunc, method)(*raw, **kwargs)
        if method == "__call__" and isinstance(out, np.ndarray) and out.shape == self.shape:
            return self._like(out)
        return out

    def __len__(self) -> int:
        if not self.axes:
            raise TypeError("len() of a 0-d Labelled")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self.isel(**{self.axes[0]: i})

    def __float__(self) -> float:
        return float(np.asarray(self.values))

    def __int__(self) -> int:
        return int(np.asarray(self.values))

    def __bool__(self) -> bool:
        return bool(np.asarray(self.values))

    def __index__(self) -> int:
        return operator.index(np.asarray(self.values).item())

    def __format__(self, spec: str) -> str:
        if not self.axes:
            return format(np.asarray(self.values).item(), spec)
        return format(str(self), spec)

    def item(self):
        """The value of a one-element array as a Python number."""
        return np.asarray(self.values).item()

    def tolist(self):
        return np.asarray(self.values).tolist()

    def astype(self, dtype) -> Labelled:
        return self._like(self.values.astype(dtype))

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape, strict=True))
        coords = "".join(f", {k}={list(v)}" for k, v in self.coords.items()
                         if v != tuple(range(len(v))))
        return f"Labelled[{dims}{coords}]({self.values!r})"

    # ------------------------------------------------------------------ names and coordinates

    def axis(self, name: str | int) -> int:
        """Position of the axis called ``name`` (an int is returned as a checked position)."""
        if _is_int(name):
            if not -self.ndim <= name < self.ndim:
                raise IndexError(f"axis {name} out of range for axes {self.axes}")
            return int(name) % self.ndim
        if name not in self.axes:
            raise KeyError(f"no axis {name!r}; axes are {self.axes}")
        return self.axes.index(name)

    def labels(self, name: str) -> tuple:
        """Coordinates along axis ``name`` (``0 .. n-1`` when none were given)."""
        if name in self.coords:
            return self.coords[name]
        return tuple(range(self.shape[self.axis(name)]))

    def position(self, name: str, label) -> int:
        """Position along axis ``name`` of the coordinate ``label`` (module docstring rule)."""
        labels = self.labels(name)
        if label in labels and not (_is_int(label) and label < 0 and name not in self.coords):
            return labels.index(label)
        if _is_int(label) and label < 0:
            if name in self.extents:
                want = self.extents[name] + label
                if want in labels:
                    return labels.index(want)
                raise KeyError(f"axis {name!r}: {label} is {name} {want} (of "
                               f"{self.extents[name]}), which is not held; it holds {labels}")
            if -len(labels) <= label:
                return len(labels) + label
        raise KeyError(f"axis {name!r} has no coordinate {label!r}; it has {labels}"
                       + (" (integers index by coordinate: use .isel() for positions)"
                          if name in self.coords and _is_int(label) else ""))

    def sel(self, **where: Any) -> Labelled:
        """Select by coordinate, e.g. ``scores.sel(layer=3, head=1)``: an integer drops the axis,
        a list keeps it. Always a :class:`Labelled` (0-d when every axis is selected)."""
        key = [slice(None)] * self.ndim
        for name, label in where.items():
            i = self.axis(name)
            if isinstance(label, list | tuple | np.ndarray):
                key[i] = [self.position(name, x) for x in np.asarray(label).tolist()]
            else:
                key[i] = self.position(name, label)
        return self._index_positions(key)

    def isel(self, **where: Any) -> Labelled:
        """Select by position along named axes, e.g. ``scores.isel(layer=-1)``."""
        key = [slice(None)] * self.ndim
        for name, pos in where.items():
            key[self.axis(name)] = pos
        return self._index_positions(key)

    def _index_positions(self, key: list) -> Labelled:
        """Positional indexing with one entry (int, slice, list/array) per axis."""
        values = self.values
        axes, coords, extents = [], {}, {}
        takes, basic = [], []
        for i, (name, k) in enumerate(zip(self.axes, key, strict=True)):
            scalar_jax = _is_jax(k) and k.ndim == 0
            if _is_int(k) or isinstance(k, slice):
                basic.append(k)
            elif scalar_jax:  # a traced scalar: take a one-element list, then drop the axis
                takes.append((i, k[None]))
                basic.append(0)
            else:
                takes.append((i, k if _is_jax(k) else np.asarray(k, dtype=np.int64)))
                basic.append(slice(None))
            if _is_int(k) or scalar_jax:
                continue
            axes.append(name)
            if name in self.extents:
                extents[name] = self.extents[name]
            if name not in self.coords:
                continue
            if isinstance(k, slice):
                coords[name] = self.coords[name][k]
            elif not isinstance(k, jax.core.Tracer):
                coords[name] = tuple(self.coords[name][j] for j in np.asarray(k).tolist())
        # List entries one axis at a time (numpy would pair up several lists), then the rest.
        for i, k in takes:
            values = _take(values, k, i)
        values = values[tuple(basic)]
        return Labelled(values, axes, coords, extents)

    def __getitem__(self, key) -> Labelled:
        if isinstance(key, str):
            raise TypeError(f"Labelled[{key!r}]: index axes by position or use "
                            f".sel({key}=...); axes are {self.axes}")
        key = key if isinstance(key, tuple) else (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("Labelled: at most one ... in an index")
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - sum(k is not None for k in key if k is not Ellipsis)
            key = key[:i] + (slice(None),) * max(fill, 0) + key[i + 1:]
        if any(k is None for k in key):  # a new axis has no name: the result is a bare array
            kept = self[tuple(k for k in key if k is not None)]
            expand = tuple(None if k is None else slice(None) for k in key if not _is_int(k))
            return kept.values[expand]
        first = key[0].values if key and isinstance(key[0], Labelled) else (key or (None,))[0]
        if len(key) == 1 and hasattr(first, "dtype") and np.dtype(first.dtype) == np.bool_:
            return self.values[first]  # a boolean mask flattens: no labels survive
        if len(key) > self.ndim:
            raise IndexError(f"Labelled: {len(key)} indices for axes {self.axes}")
        key = list(key) + [slice(None)] * (self.ndim - len(key))
        pos = []
        for name, k in zip(self.axes, key, strict=True):
            if isinstance(k, Labelled):
                k = k.values
            if _is_int(k):
                pos.append(self.position(name, int(k)))
            elif isinstance(k, slice):
                pos.append(k)
            elif isinstance(k, jax.core.Tracer):
                if name in self.coords and self.coords[name] != tuple(range(len(self.coords[name]))):
                    raise IndexError(f"Labelled: a traced index on axis {name!r}, whose "
                                     f"coordinates are {self.coords[name]}; index .values")
                pos.append(k)
            else:
                arr = np.asarray(k)
                if arr.ndim == 0:
                    pos.append(self.position(name, arr.item()))
                elif arr.ndim == 1:
                    pos.append([self.position(name, x) for x in arr.tolist()])
                else:
                    raise IndexError(f"Labelled: index of shape {arr.shape} on axis {name!r}; "
                                     "index .values for fancy indexing")
        return self._index_positions(pos)

    # ------------------------------------------------------------------ reshaping

    def transpose(self, *axes: str) -> Labelled:
        """The same data with the axes in the given order (names or positions)."""
        if len(axes) == 1 and isinstance(axes[0], list | tuple):
            axes = tuple(axes[0])
        names = tuple(self.axes[self.axis(a)] for a in axes)
        if sorted(names) != sorted(self.axes):
            raise ValueError(f"transpose: {axes} is not a permutation of {self.axes}")
        perm = [self.axes.index(a) for a in names]
        return self._like(self.values.transpose(perm), names)

    def rename(self, **names: str) -> Labelled:
        """Rename axes: ``x.rename(d_model_in="d_model")``."""
        for old in names:
            self.axis(old)
        new = tuple(names.get(a, a) for a in self.axes)
        return Labelled(self.values, new, {names.get(k, k): v for k, v in self.coords.items()},
                        {names.get(k, k): v for k, v in self.extents.items()})

    def map(self, fn) -> Labelled:
        """Apply an elementwise function to the values, keeping names and coordinates."""
        return self._like(fn(self.values))

    # ------------------------------------------------------------------ reductions

    def _reduce(self, fn, axis, **kw) -> Labelled:
        if axis is None:
            return Labelled(fn(self.values, **kw), ())
        names = axis if isinstance(axis, tuple | list) else (axis,)
        idx = tuple(self.axis(a) for a in names)
        keep = [a for i, a in enumerate(self.axes) if i not in idx]
        return self._like(fn(self.values, axis=idx, **kw), keep)

    def sum(self, axis=None) -> Labelled:
        """Sum over axes given by name or position (all when None)."""
        return self._reduce(_lib(self.values).sum, axis)

    def mean(self, axis=None) -> Labelled:
        return self._reduce(_lib(self.values).mean, axis)

    def max(self, axis=None) -> Labelled:
        return self._reduce(_lib(self.values).max, axis)

    def min(self, axis=None) -> Labelled:
        return self._reduce(_lib(self.values).min, axis)

    def std(self, axis=None) -> Labelled:
        return self._reduce(_lib(self.values).std, axis)

    def norm(self, axis) -> Labelled:
        """Euclidean norm over ``axis`` (e.g. ``"d_model"``)."""
        lib = _lib(self.values)
        return self._reduce(lambda v, axis: lib.sqrt(lib.sum(v * v, axis=axis)), axis)

    # ------------------------------------------------------------------ arithmetic

    def _binary(self, other, op, reflected: bool = False):
        if isinstance(other, Labelled):  # (never reflected: Python calls the left one's op)
            a, b = _align(self, other)
            return a._like(op(a.values, b.values))
        if isinstance(other, numbers.Number):
            out = op(other, self.values) if reflected else op(self.values, other)
            return self._like(out)
        try:
            oshape = np.shape(other)
        except Exception:  # noqa: BLE001 - not array-like
            return NotImplemented
        out = op(other, self.values) if reflected else op(self.values, other)
        if tuple(np.shape(out)) == self.shape and len(oshape) <= self.ndim:
            return self._like(out)
        return out

    def __add__(self, o):
        return self._binary(o, operator.add)

    def __radd__(self, o):
        return self._binary(o, operator.add, True)

    def __sub__(self, o):
        return self._binary(o, operator.sub)

    def __rsub__(self, o):
        return self._binary(o, operator.sub, True)

    def __mul__(self, o):
        return self._binary(o, operator.mul)

    def __rmul__(self, o):
        return self._binary(o, operator.mul, True)

    def __truediv__(self, o):
        return self._binary(o, operator.truediv)

    def __rtruediv__(self, o):
        return self._binary(o, operator.truediv, True)

    def __floordiv__(self, o):
        return self._binary(o, operator.floordiv)

    def __rfloordiv__(self, o):
        return self._binary(o, operator.floordiv, True)

    def __mod__(self, o):
        return self._binary(o, operator.mod)

    def __pow__(self, o):
        return self._binary(o, operator.pow)

    def __rpow__(self, o):
        return self._binary(o, operator.pow, True)

    def __lt__(self, o):
        return self._binary(o, operator.lt)

    def __le__(self, o):
        return self._binary(o, operator.le)

    def __gt__(self, o):
        return self._binary(o, operator.gt)

    def __ge__(self, o):
        return self._binary(o, operator.ge)

    def __eq__(self, o):  # elementwise, as for arrays
        return self._binary(o, operator.eq)

    def __ne__(self, o):
        return self._binary(o, operator.ne)

    __hash__ = None  # elementwise == makes it unhashable, like an array

    def __and__(self, o):
        return self._binary(o, operator.and_)

    def __or__(self, o):
        return self._binary(o, operator.or_)

    def __neg__(self):
        return self._like(-self.values)

    def __pos__(self):
        return self

    def __abs__(self):
        return self._like(abs(self.values))

    def __invert__(self):
        return self._like(~self.values)

    def __matmul__(self, o):
        return _matmul(self, o)

    def __rmatmul__(self, o):
        return _matmul(o, self)

    # ------------------------------------------------------------------ summaries

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


def _lib(values):
    return jnp if _is_jax(values) else np


def _align(a: Labelled, b: Labelled) -> tuple[Labelled, Labelled]:
    """Both operands over the union of their axes (``a``'s, then ``b``'s new ones); an axis one
    of them lacks gets size 1. Shared axes must have equal sizes and coordinates."""
    for name in set(a.axes) & set(b.axes):
        if a.sizes[name] != b.sizes[name] or a.labels(name) != b.labels(name):
            raise ValueError(f"Labelled: axis {name!r} differs between the operands "
                             f"({a.labels(name)} vs {b.labels(name)})")
    axes = a.axes + tuple(x for x in b.axes if x not in a.axes)
    coords = {**b.coords, **a.coords}
    extents = {**b.extents, **a.extents}

    def expand(x: Labelled) -> Labelled:
        v = x.values
        v = v.transpose([x.axes.index(n) for n in axes if n in x.axes])
        shape = [x.sizes[n] if n in x.axes else 1 for n in axes]
        v = v.reshape(shape)
        out = object.__new__(Labelled)
        out.values, out.axes = v, axes
        out.coords = {k: c for k, c in coords.items()}
        out.extents = extents
        return out

    return expand(a), expand(b)


def _matmul(a, b):
    """``a @ b`` with numpy's rule; names as in the module docstring."""
    av = a.values if isinstance(a, Labelled) else a
    bv = b.values if isinstance(b, Labelled) else b
    out = av @ bv if not (_is_jax(av) or _is_jax(bv)) else jnp.matmul(av, bv)
    if not (isinstance(a, Labelled) and isinstance(b, Labelled)):
        lab = a if isinstance(a, Labelled) else b
        nd = np.ndim(bv) if lab is a else np.ndim(av)
        if lab is a and nd == 1:
            return lab._like(out, lab.axes[:-1])
        if lab is b and nd == 1:
            return lab._like(out, lab.axes[:-2] + lab.axes[-1:])
        return out  # the bare operand's axes have no names
    if a.ndim == 1 and b.ndim == 1:
        return Labelled(out, ())
    if a.ndim == 1:
        names = b.axes[:-2] + b.axes[-1:]
        return _named(out, names, a, b)
    if b.ndim == 1:
        return _named(out, a.axes[:-1], a, b)
    row, col = a.axes[-2], b.axes[-1]
    if row == col:
        row, col = row + "_in", col + "_out"
    ba, bb = a.axes[:-2], b.axes[:-2]
    nb = max(len(ba), len(bb))
    batch = []
    for i in range(nb):
        na = ba[len(ba) - nb + i] if len(ba) - nb + i >= 0 else None
        nb_ = bb[len(bb) - nb + i] if len(bb) - nb + i >= 0 else None
        if na is not None and nb_ is not None and na != nb_:
            raise ValueError(f"Labelled @: batch axes {ba} and {bb} do not match by name")
        batch.append(na or nb_)
    return _named(out, tuple(batch) + (row, col), a, b)


def _named(out, names, a: Labelled, b: Labelled) -> Labelled:
    coords, extents = {}, {}
    for x in (b, a):
        for k, v in x.coords.items():
            if k in names:
                coords[k] = v
        for k, v in x.extents.items():
            if k in names:
                extents[k] = v
    return Labelled(out, names, coords, extents)

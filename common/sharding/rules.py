"""Logical axis names -> mesh axes, and the PartitionSpecs of a model's parameters.

The core names every parameter dimension (``nnx.Param`` metadata ``out_sharding``, e.g.
``('embed', 'heads', 'head_dim')``). A rule table maps each logical name to one mesh axis (or
``None``: replicated), in the MaxText manner but with a vocabulary of nine names and four
mesh axes:

==========  =========  ==================================================
logical     mesh axis  why
==========  =========  ==================================================
batch       data       data parallelism
embed       fsdp       parameters (and optimiser state) split ZeRO-3 style
heads       tensor     Megatron-style head parallelism
kv_heads    tensor     grouped-query K/V heads follow their query heads
mlp         tensor     MLP hidden units
vocab       tensor     embedding / unembedding rows
head_dim    None
seq         None       (``context`` with :data:`CONTEXT_RULES`)
models      data       a population's model axis (``common.train.population``)
==========  =========  ==================================================

A dimension is left replicated (``None``) when its size is not divisible by the mesh axis
size (e.g. 3 KV heads on ``tensor=4``) or when the mesh axis is already used by an earlier
dimension of the same array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("seq", None),
    ("models", "data"),
)
# Context (sequence) parallelism for activations: sequence dimension over ``context``.
CONTEXT_RULES: Rules = tuple((k, "context" if k == "seq" else v) for k, v in DEFAULT_RULES)


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Rules = DEFAULT_RULES,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for one array whose dimensions carry logical ``names``.

    Args:
      names: one logical name (or None) per dimension; None/empty gives ``P()`` (replicated).
      rules: logical name -> mesh axis table.
      mesh, shape: when both given, a dimension whose size the mesh axis does not divide is
        replicated instead.

    Raises:
      KeyError: a logical name that the rules do not know.
    """
    if not names:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out: list[str | None] = []
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        axis = table[name]
        if axis is not None and mesh is not None and axis not in mesh.shape:
            raise KeyError(f"rule {name!r} -> {axis!r}: mesh has axes {tuple(mesh.shape)}")
        if axis is None or axis in used:
            out.append(None)
            continue
        if mesh is not None and shape is not None and shape[i] % mesh.shape[axis]:
            out.append(None)
            continue
        used.add(axis)
        out.append(axis)
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def _logical_names(variable) -> tuple | None:
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def param_specs(state, rules: Rules = DEFAULT_RULES, mesh: Mesh | None = None):
    """PartitionSpecs for an ``nnx.State`` (e.g. ``nnx.state(model, nnx.Param)``).

    Returns a pure nested dict (the structure of ``nnx.to_pure_dict(state)``) whose leaves are
    PartitionSpecs read from each variable's ``out_sharding`` metadata through ``rules``.
    Variables without logical names are replicated.
    """
    from flax import nnx

    specs = jax.tree.map(
        lambda v: logical_to_spec(_logical_names(v), rules, mesh, v.shape),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.to_pure_dict(specs) if isinstance(specs, nnx.State) else specs


def logical_names(state) -> dict:
    """The logical names of every variable of an ``nnx.State`` as a pure nested dict."""
    from flax import nnx

    names = jax.tree.map(
        lambda v: _LeafNames(_logical_names(v)), state,
        is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    pure = nnx.to_pure_dict(names) if isinstance(names, nnx.State) else names
    return jax.tree.map(lambda n: n.names, pure, is_leaf=lambda x: isinstance(x, _LeafNames))


class _LeafNames:
    """Opaque leaf wrapper so that a tuple of names is not traversed as a pytree."""

    def __init__(self, names):
        self.names = None if names is None else tuple(names)


def opt_state_specs(opt_state, params_specs: Mapping) -> object:
    """PartitionSpecs for an optax state (abstract or concrete) given the params' specs.

    Optax keeps params-shaped subtrees (Adam's ``mu``/``nu``, ...) inside its state; a state leaf
    whose key path ends with a parameter's key path takes that parameter's spec. Every other
    leaf (step counts, scalars) is replicated.
    """
    by_path = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(
        params_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )[0]:
        by_path[tuple(_key(k) for k in path)] = spec
    lengths = sorted({len(p) for p in by_path}, reverse=True)

    def spec_for(path, leaf):
        keys = tuple(_key(k) for k in path)
        for n in lengths:
            if len(keys) >= n and keys[-n:] in by_path:
                return by_path[keys[-n:]]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_for, opt_state)


def _key(k) -> object:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def named_shardings(mesh: Mesh, specs):
    """Map a pytree of PartitionSpecs to NamedShardings on ``mesh``."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def spec_to_json(spec: PartitionSpec) -> list:
    """``P('fsdp', 'tensor')`` -> ``['fsdp', 'tensor']`` (tuples of axes stay lists)."""
    return [list(a) if isinstance(a, tuple) else a for a in spec]

"""Logical axis names -> mesh axes, and the PartitionSpecs of a model's parameters.

The core names every parameter dimension (``nnx.Param`` metadata ``out_sharding``, e.g.
``('embed', 'heads', 'head_dim')``). A rule table maps each logical name to one mesh axis (or
``None``: replicated), in the MaxText manner but with a vocabulary of ten names and four
mesh axes:

==========  =========  ==================================================
logical     mesh axis  why
==========  =========  ==================================================
batch       data,fsdp  data parallelism; the FSDP axis splits the batch too (ZeRO-3: each
                       device computes its own examples with gathered parameters)
embed       fsdp       parameters (and optimiser state) split ZeRO-3 style
heads       tensor     Megatron-style head parallelism
kv_heads    tensor     grouped-query K/V heads follow their query heads
mlp         tensor     MLP hidden units
vocab       tensor     embedding / unembedding rows
head_dim    None
seq         None       (``context`` with :data:`CONTEXT_RULES`)
models      data       a population's model axis (``common.train.population``)
layers      None       the block stack's layer axis (scanned over, so never split)
==========  =========  ==================================================

A rule may name several mesh axes (``batch`` -> ``data`` then ``fsdp``), as MaxText's do. A
dimension is left replicated (``None``) when its size is not divisible by the mesh axis size
(e.g. 3 KV heads on ``tensor=4``) or when the mesh axis is already used by an earlier
dimension of the same array; of several axes, those that fit are kept in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("seq", None),
    ("models", "data"),
    ("layers", None),
)
# Context (sequence) parallelism for activations: sequence dimension over ``context``.
CONTEXT_RULES: Rules = tuple((k, "context" if k == "seq" else v) for k, v in DEFAULT_RULES)


def as_rules(rules) -> Rules:
    """``rules`` (None: :data:`DEFAULT_RULES`) as a hashable tuple of ``(name, axis | axes |
    None)`` pairs (lists, as a JSON config gives them, become tuples)."""
    if rules is None:
        return DEFAULT_RULES
    return tuple((str(k), tuple(v) if isinstance(v, list | tuple) else v) for k, v in rules)


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
    out: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        rule = table[name]
        axes = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
        kept: list[str] = []
        size = 1
        for axis in axes:
            if mesh is not None and axis not in mesh.shape:
                raise KeyError(f"rule {name!r} -> {axis!r}: mesh has axes {tuple(mesh.shape)}")
            if axis in used:
                continue
            n = 1 if mesh is None else mesh.shape[axis]
            if mesh is not None and shape is not None and shape[i] % (size * n):
                continue
            kept.append(axis)
            size *= n
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


@dataclasses.dataclass(frozen=True)
class MeshPlacement:
    """``(logical names, shape) -> NamedSharding`` on ``mesh`` by ``rules``; hashable, so a
    jitted function can take it as a static argument (the probes do: captures, sweeps)."""

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    def __call__(self, names, shape) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(names, self.rules, self.mesh, shape))


def activation_placement(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> MeshPlacement:
    """``(logical names, shape) -> NamedSharding`` on ``mesh`` by ``rules``: the placement of
    the model's named activations (:mod:`common.models.activation_sharding`) in a train step
    and in the probes (captures, sweeps) of a sharded model."""
    return MeshPlacement(mesh, as_rules(rules))


def placement_of(params, rules: Rules | None = None) -> MeshPlacement | None:
    """The placement of a model whose parameters ``params`` (arrays, or abstract
    ``ShapeDtypeStruct`` values with shardings) live on a mesh of more than one device, or None
    (one device: nothing to place)."""
    for leaf in jax.tree.leaves(params):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.size > 1:
            return MeshPlacement(sh.mesh, as_rules(rules))
    return None


def logical_names_of(variable) -> tuple | None:
    """The logical axis names of one ``nnx.Variable`` (its ``out_sharding`` metadata), or None."""
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


_logical_names = logical_names_of


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

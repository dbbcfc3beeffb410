"""Interventions as data: one pytree handed to the jitted forward.

``model(input_ids, intervention=Intervention(gate=g))`` runs the model with every head's
output ``z`` scaled by ``g [layer, head]``. The :class:`Intervention` is a ``flax.struct``
dataclass: its arrays are pytree leaves (changing their values never retraces a jitted
forward, and ``jax.grad`` differentiates through them), while the choices that change the
program (which site a patch edits, the probability-transform function, the layers where an
optional site such as ``pattern`` must be computed) are static fields. Which layers a patch
of an always-computed site (``z``, ``resid_pre``, ...) edits is data: a loop over layers and
heads of single-head patches runs one compiled program. Absent fields (``None``) cost
nothing: an empty ``Intervention()`` gives the plain forward bit for bit.

On a head's output ``z [batch, pos, head, d_head]`` at layer ``l`` the edits apply in this
order (``m`` are position masks, 1 where the edit applies)::

    z = patches                                  # replace chosen (layer, head, pos) values
    z = gate[l] * z + (1 - gate[l]) * baseline   # ablation / scaling (baseline 0 or a mean)
    z = (1 - a[l] m) * z + a[l] m * v[l]          # soft injection (mixing)
    z = z + m * offset[l]                         # additive per-head offsets (LoFiT)

Attention edits (probability transform, mask, per-head position ids) apply at
``edit_layers`` (all layers when None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from common.attention.hooks import (
    HEAD_AXIS,
    OPTIONAL_SITES,
    POS_AXIS,
    SITE_AXES,
    SITE_TABLE,
    SITES,
    AttentionEdit,
    Hooks,
    site_layers,
)
from common.attention.masks import Mask


def _heads_of(site: str, config) -> int:
    """Number of heads along the head axis of ``site`` (kv heads for k, v, rot_k)."""
    return config.n_kv_heads if SITE_TABLE[site].kv else config.n_heads


def _shape_error(field: str, want: str, got) -> ValueError:
    return ValueError(f"Intervention.{field}: expected shape {want}, got {tuple(got)}")


def _concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array when it holds no tracer (known while building the program)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x)):
        return None
    return np.asarray(x)


@struct.dataclass
class Patch:
    """Replace a site's value, where ``where`` says so, by ``value``.

    Attributes:
      site: site name (static), one of ``common.attention.hooks.SITES``.
      layers: the layers patched, ``int [n]`` (data: a new choice of layers reuses the compiled
        program); ``value[i]`` is used at ``layers[i]``. A tuple of ints works too.
      value: ``[n, *site_shape]``; batch and position axes may be 1 to broadcast.
      where: boolean (replace) or float (interpolate ``w·value + (1-w)·x``) mask broadcastable
        to ``value``; None replaces the whole site.
      add: static; True adds ``value`` instead of replacing (``x + w·value``, ``x + value``
        without ``where``): a steering vector added to the residual stream (function vectors).
      static_layers: for the optional sites (``pattern``, ``head_out``, ... computed only where
        a hook wants them), the layers where the program computes the site (static; a
        superset of ``layers``; :func:`make_patch` sets it to the patched layers); None: every
        layer. Not needed for the other sites, which every layer computes anyway.
    """

    site: str = struct.field(pytree_node=False)
    layers: Any
    value: jax.Array
    where: jax.Array | None = None
    static_layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    add: bool = struct.field(pytree_node=False, default=False)

    @property
    def layers_shape(self) -> tuple[int, ...]:
        """The shape of ``layers`` (``(n,)`` when well formed), traced or not."""
        if isinstance(self.layers, tuple | list):
            return (len(self.layers),) if all(np.ndim(x) == 0 for x in self.layers) else (-1, -1)
        return tuple(np.shape(self.layers))

    @property
    def n_layers(self) -> int:
        """How many layers the patch carries values for (``value.shape[0]``)."""
        return self.layers_shape[0]

    def computed_at(self, layer: int) -> bool:
        """Whether this patch may apply at ``layer`` (static)."""
        return self.static_layers is None or layer in self.static_layers

    def apply(self, i, x: jax.Array, field: str) -> jax.Array:
        """Patch ``x`` with entry ``i`` (an int or a traced index) of ``value``/``where``."""
        v = self.value[i].astype(x.dtype)
        try:
            jnp.broadcast_shapes(v.shape, x.shape)
        except ValueError:
            raise ValueError(
                f"Intervention.{field}.value: a layer's value {tuple(v.shape)} does not fit site "
                f"{self.site!r} of shape {tuple(x.shape)} ({SITE_AXES[self.site]})"
            ) from None
        if self.where is None:
            return x + v if self.add else jnp.broadcast_to(v, x.shape)
        w = self.where[i]
        try:
            jnp.broadcast_shapes(w.shape, x.shape)
        except ValueError:
            raise ValueError(
                f"Intervention.{field}.where: a layer's mask {tuple(w.shape)} does not fit site "
                f"{self.site!r} of shape {tuple(x.shape)} ({SITE_AXES[self.site]})"
            ) from None
        if self.add:
            return x + w.astype(x.dtype) * v
        if w.dtype == jnp.bool_:
            return jnp.where(w, v, x)
        w = w.astype(x.dtype)
        return w * v + (1 - w) * x

    def apply_at(self, layer: int, x: jax.Array, field: str) -> jax.Array:
        """``x``, the site's value at ``layer``, patched if ``layer`` is one of ``layers``.

        Known layers (outside a trace) select the entry in Python; traced ones select it in
        the program (``x`` itself where ``layer`` is not patched: exact either way).
        """
        known = None if isinstance(layer, jax.core.Tracer) else _concrete(self.layers)
        if known is not None:
            hits = np.flatnonzero(known.reshape(-1) == layer)
            return x if hits.size == 0 else self.apply(int(hits[0]), x, field)
        layers = jnp.asarray(self.layers, jnp.int32).reshape(-1)
        hit = layers == layer
        if layers.shape[0] == 1:
            return jnp.where(hit[0], self.apply(0, x, field), x)
        return jnp.where(hit.any(), self.apply(jnp.argmax(hit), x, field), x)


@struct.dataclass
class Intervention:
    """Every per-head edit of a forward pass, as data. All fields are optional.

    Attributes:
      gate: ``[n_layers, n_heads]`` multiplier on each head's ``z`` (0 ablates, 1 keeps).
      gate_baseline: ``[n_layers, pos|1, n_heads, d_head]``: what a gate < 1 moves ``z``
        toward (mean ablation); None means zeros.
      offset: ``[n_layers, n_heads, d_head]`` added to ``z``.
      offset_where: ``[batch|1, pos]`` (bool or float) positions the offset applies to; None
        means all.
      mix_a: ``[n_layers, n_heads]`` mixing coefficients ``a`` (soft injection).
      mix_v: ``[n_layers, n_heads, d_head]`` injected vectors ``v``.
      mix_where: ``[batch|1, pos]`` positions the mixing applies to; None means all.
      patches: tuple of :class:`Patch` (replace any site's value from another run).
      prob_transform: static function ``(pattern [batch, heads, q, kv], prob_params, layer)
        -> pattern`` applied to the attention probabilities (forces the reference attention
        path at ``edit_layers``).
      prob_heads: ``[n_layers, n_heads]`` bool/float: which heads take the transformed
        pattern (None: all heads).
      prob_params: any pytree of arrays handed to ``prob_transform`` (learnable, no retrace).
      mask: a :class:`~common.attention.masks.Mask` replacing the model's mask.
      q_positions: RoPE positions of queries ``[batch, seq]`` or per head
        ``[batch, n_heads, seq]``.
      kv_positions: RoPE positions of keys ``[batch, seq]`` or ``[batch, n_kv_heads, seq]``.
      key_positions: static function ``(q, k, key_params, layer) -> KeyPositions`` of the
        queries and keys before RoPE: RoPE applied inside the attention at query-dependent
        key positions (:mod:`common.attention.key_positions`; PINE's per-query segment order);
        the KV cache then holds keys before RoPE.
      key_params: any pytree of arrays handed to ``key_positions`` (segment ids, lengths...).
      edit_layers: static tuple of layers where ``prob_transform``, ``mask``, the position
        ids and ``key_positions`` apply (None: every layer).
    """

    gate: jax.Array | None = None
    gate_baseline: jax.Array | None = None
    offset: jax.Array | None = None
    offset_where: jax.Array | None = None
    mix_a: jax.Array | None = None
    mix_v: jax.Array | None = None
    mix_where: jax.Array | None = None
    patches: tuple[Patch, ...] = ()
    prob_transform: Callable | None = struct.field(pytree_node=False, default=None)
    prob_heads: jax.Array | None = None
    prob_params: Any = None
    mask: Mask | None = None
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    key_positions: Callable | None = struct.field(pytree_node=False, default=None)
    key_params: Any = None
    edit_layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def ablate(cls, model, heads: Sequence[tuple[int, int]], scale: float = 0.0) -> Intervention:
        """Zero-ablate (or scale by ``scale``) the given heads.

        Args:
          model: the model or its config (``model.config``).
          heads: a list of ``(layer, head)`` pairs: ``[(23, 3)]`` for one head; negative
            layers count from the end (``(-1, 0)``).
        """
        config = config_of(model, "Intervention.ablate")
        pairs = head_pairs(heads, config)
        for layer, head in pairs:
            _check_head(config, "heads", layer, head, config.n_heads)
        ls = [layer % config.n_layers for layer, _ in pairs]
        hs = [head for _, head in pairs]
        if isinstance(scale, int | float):  # built in numpy: no per-head device ops
            gate = np.ones((config.n_layers, config.n_heads), np.float32)
            gate[ls, hs] = scale
            return cls(gate=jnp.asarray(gate))
        gate = jnp.ones((config.n_layers, config.n_heads), jnp.float32)  # scale may be traced
        return cls(gate=gate.at[jnp.asarray(ls, int), jnp.asarray(hs, int)].set(scale))

    @classmethod
    def mean_ablate(cls, model, heads: Sequence[tuple[int, int]], cache,
                    over: Sequence[str] = ("batch",)) -> Intervention:
        """Replace the given heads' ``z`` by its mean over ``over`` in a reference cache.

        Args:
          model: the model or its config.
          heads: a list of ``(layer, head)`` pairs, as for :meth:`ablate`.
          cache: an :class:`~common.interp.cache.ActivationCache` holding ``z`` at every layer
            (``run_with_cache(model, reference_ids, names_filter="z")``).
          over: axes averaged, ``("batch",)`` (per-position means, the reference prompts must
            have the length of the ablated ones) or ``("batch", "pos")``.
        """
        config = config_of(model, "Intervention.mean_ablate")
        bad = set(over) - {"batch", "pos"}
        if bad:
            raise ValueError(f"mean_ablate: over must name 'batch' and/or 'pos', got {over}")
        axis = tuple(i for i, a in enumerate(("batch", "pos")) if a in over)
        if "z" not in cache or cache.layers("z") != tuple(range(config.n_layers)):
            raise ValueError("mean_ablate: the reference cache must hold 'z' at every layer")
        zs = jnp.stack([cache["z", layer] for layer in range(config.n_layers)])
        mean = jnp.mean(zs, axis=tuple(a + 1 for a in axis), keepdims=True)[:, 0]  # [L, s|1, h, d]
        gate = cls.ablate(config, heads).gate
        return cls(gate=gate, gate_baseline=mean)

    @classmethod
    def patch(
        cls,
        model,
        cache,
        site: str,
        heads: Sequence[tuple[int, int]] | None = None,
        layers: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
    ) -> Intervention:
        """Patch ``site`` from another run's cache.

        Args:
          model: the model or its config.
          cache: an ``ActivationCache`` of the source run holding ``site`` at the layers used.
          site: the site to patch (``z``, ``q``, ``k``, ``v``, ``attn_scores``, ``pattern``,
            ``resid_pre``, ``mlp_post``, ``ln1_scale``, ...). For ``k``, ``v``, ``rot_k`` the
            head index is a key/value head.
          heads: a list of ``(layer, head)`` pairs (per-head sites only; ``[(23, 3)]`` for one
            head); None patches whole layers.
          layers: layers patched whole (with ``heads=None``); leave it out for the final norm's
            ``ln_final_scale`` (its one layer, ``n_layers``: freezing the final norm).

        The patched layers are data: patches of the same site and shape at other layers reuse
        the compiled program (optional sites such as ``pattern`` excepted, see
        :attr:`Patch.static_layers`).
          positions: (query) positions patched; None patches every position.
        """
        return cls(patches=(make_patch(model, cache, site, heads, layers, positions),))

    def merge(self, other: Intervention) -> Intervention:
        """Compose two interventions: gates multiply, offsets add, patches concatenate; other
        fields must be set in at most one of them."""
        out = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "patches":
                out[f.name] = tuple(a) + tuple(b)
            elif a is None:
                out[f.name] = b
            elif b is None:
                out[f.name] = a
            elif f.name == "gate" and self.gate_baseline is None and other.gate_baseline is None:
                out[f.name] = a * b
            elif f.name == "offset" and self.offset_where is None and other.offset_where is None:
                out[f.name] = a + b
            else:
                raise ValueError(f"Intervention.merge: field {f.name!r} is set in both")
        return Intervention(**out)

    # ------------------------------------------------------------------ validation and hooks

    def validate(self, config) -> None:
        """Raise ``ValueError`` naming the field whose shape or index does not fit ``config``."""
        L, H, D = config.n_layers, config.n_heads, config.d_head
        lh = f"[n_layers, n_heads] = ({L}, {H})"

        def check(name, value, shape, want):
            if value is not None and tuple(value.shape) != shape:
                raise _shape_error(name, want, value.shape)

        check("gate", self.gate, (L, H), lh)
        if self.gate_baseline is not None:
            if self.gate is None:
                raise ValueError("Intervention.gate_baseline: given without a gate")
            gb = self.gate_baseline
            if gb.ndim != 4 or gb.shape[0] != L or gb.shape[2:] != (H, D):
                raise _shape_error("gate_baseline",
                                   f"[n_layers, pos|1, n_heads, d_head] = ({L}, pos, {H}, {D})",
                                   gb.shape)
        check("offset", self.offset, (L, H, D), f"[n_layers, n_heads, d_head] = ({L}, {H}, {D})")
        check("mix_a", self.mix_a, (L, H), lh)
        check("mix_v", self.mix_v, (L, H, D), f"[n_layers, n_heads, d_head] = ({L}, {H}, {D})")
        if (self.mix_a is None) != (self.mix_v is None):
            raise ValueError("Intervention.mix_a and Intervention.mix_v must be given together")
        for name in ("offset_where", "mix_where"):
            w = getattr(self, name)
            if w is not None and w.ndim not in (1, 2):
                raise _shape_error(name, "[pos] or [batch|1, pos]", w.shape)
        if self.offset_where is not None and self.offset is None:
            raise ValueError("Intervention.offset_where: given without an offset")
        if self.mix_where is not None and self.mix_a is None:
            raise ValueError("Intervention.mix_where: given without mix_a / mix_v")
        check("prob_heads", self.prob_heads, (L, H), lh)
        if self.prob_transform is not None and not callable(self.prob_transform):
            raise ValueError("Intervention.prob_transform: must be callable "
                             "(pattern, prob_params, layer) -> pattern")
        if self.prob_heads is not None and self.prob_transform is None:
            raise ValueError("Intervention.prob_heads: given without a prob_transform")
        if self.key_positions is not None and not callable(self.key_positions):
            raise ValueError("Intervention.key_positions: must be callable "
                             "(q, k, key_params, layer) -> KeyPositions")
        if self.key_positions is not None and (self.q_positions is not None
                                               or self.kv_positions is not None):
            raise ValueError("Intervention.key_positions: give it or q_positions/kv_positions, "
                             "not both")
        if self.key_params is not None and self.key_positions is None:
            raise ValueError("Intervention.key_params: given without key_positions")
        if self.edit_layers is not None:
            for layer in self.edit_layers:
                if not 0 <= layer < L:
                    raise ValueError(f"Intervention.edit_layers: layer {layer} out of range "
                                     f"[0, {L})")
        if self.mask is not None and not isinstance(self.mask, Mask):
            raise ValueError(f"Intervention.mask: expected a Mask, got {type(self.mask)}")
        for name, heads in (("q_positions", H), ("kv_positions", config.n_kv_heads)):
            p = getattr(self, name)
            if p is None:
                continue
            if p.ndim == 3 and p.shape[1] not in (1, heads):
                raise _shape_error(name, f"[batch, seq] or [batch, {heads}, seq]", p.shape)
            if p.ndim not in (2, 3):
                raise _shape_error(name, f"[batch, seq] or [batch, {heads}, seq]", p.shape)
        for j, p in enumerate(self.patches):
            field = f"patches[{j}]"
            if not isinstance(p, Patch):
                raise ValueError(f"Intervention.{field}: expected a Patch, got {type(p)}")
            if p.site not in SITES:
                raise ValueError(f"Intervention.{field}.site: unknown site {p.site!r}; "
                                 f"known sites: {SITES}")
            if len(p.layers_shape) != 1:
                raise ValueError(f"Intervention.{field}.layers: expected a list of layers "
                                 f"[n], got {p.layers!r}")
            n_l = p.n_layers
            known = _concrete(p.layers)
            allowed = site_layers(p.site, L)
            span = f"[0, {L})" if allowed[0] == 0 else f"{allowed} (the final norm's layer)"
            if known is not None:  # outside a trace: the values are checked too
                for layer in known.tolist():
                    if layer not in allowed:
                        raise ValueError(f"Intervention.{field}.layers: layer {layer} out of "
                                         f"range {span}")
                    if not p.computed_at(layer):
                        raise ValueError(f"Intervention.{field}.layers: layer {layer} is not in "
                                         f"static_layers {p.static_layers}")
                if len(set(known.tolist())) != n_l:
                    raise ValueError(f"Intervention.{field}.layers: repeated layer in "
                                     f"{tuple(known.tolist())}")
            for layer in p.static_layers or ():
                if layer not in allowed:
                    raise ValueError(f"Intervention.{field}.static_layers: layer {layer} out of "
                                     f"range [0, {L})")
            want_nd = len(SITE_AXES[p.site]) + 1
            if p.value.ndim != want_nd or p.value.shape[0] != n_l:
                raise _shape_error(f"{field}.value",
                                   f"[{n_l} layers, {', '.join(SITE_AXES[p.site])}]",
                                   p.value.shape)
            if p.site in HEAD_AXIS:
                n = _heads_of(p.site, config)
                got = p.value.shape[1 + HEAD_AXIS[p.site]]
                if got not in (1, n):
                    raise ValueError(f"Intervention.{field}.value: site {p.site!r} has {n} heads, "
                                     f"the value has {got}")
            if p.where is not None and (p.where.ndim != want_nd
                                        or p.where.shape[0] != n_l):
                raise _shape_error(f"{field}.where",
                                   f"[{n_l} layers, {', '.join(SITE_AXES[p.site])}] "
                                   "(axes may be 1)", p.where.shape)

    def is_empty(self) -> bool:
        """True when no field is set (the forward is the plain one)."""
        return all(
            getattr(self, f.name) is None
            or (isinstance(getattr(self, f.name), tuple) and not getattr(self, f.name))
            for f in dataclasses.fields(self)
        )

    def hooks(self, config, inner: Hooks | None = None) -> Hooks:
        """The :class:`~common.attention.hooks.Hooks` that apply this intervention.

        ``inner`` hooks (another intervention, a capture) run on each site after this one.
        """
        self.validate(config)
        return InterventionHooks(self, config, inner)


def _check_head(config, field: str, layer: int, head: int, n_heads: int) -> None:
    if not -config.n_layers <= int(layer) < config.n_layers:
        raise ValueError(f"Intervention.{field}: layer {layer} out of range [0, {config.n_layers})")
    if not 0 <= int(head) < n_heads:
        raise ValueError(f"Intervention.{field}: head {head} out of range [0, {n_heads})")


def config_of(model_or_config, where: str = "Intervention"):
    """The ``ModelConfig`` of a model (``model.config``), or the config itself."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if not all(hasattr(cfg, a) for a in ("n_layers", "n_heads", "n_kv_heads", "d_head")):
        raise TypeError(f"{where}: expected a model or its config (model.config), got "
                        f"{type(model_or_config).__name__}")
    return cfg


_HEADS_SHAPE = ("heads must be a list of (layer, head) pairs, e.g. [(23, 3)] or [(23, 3), "
                "(-1, 0)] (negative layers count from the end)")


def head_pairs(heads, config, field: str = "heads") -> list[tuple[int, int]]:
    """``[(layer, head), ...]`` checked and with negative layers resolved; a clear error for any
    other shape (``[23, 3]``, ``(23, 3)``, ``23``)."""
    if isinstance(heads, Mapping) or isinstance(heads, str) or not isinstance(heads, Iterable):
        raise TypeError(f"Intervention.{field}: {_HEADS_SHAPE}; got {heads!r}")
    heads = list(np.asarray(heads).tolist()) if hasattr(heads, "shape") else list(heads)
    out = []
    for pair in heads:
        ok = (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
              and all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in pair))
        if not ok:
            hint = ""
            if len(heads) == 2 and all(isinstance(x, int | np.integer) for x in heads):
                hint = f" (for layer {heads[0]}, head {heads[1]} write [({heads[0]}, {heads[1]})])"
            raise TypeError(f"Intervention.{field}: {_HEADS_SHAPE}; got {pair!r} in "
                            f"{heads!r}{hint}")
        out.append((int(pair[0]), int(pair[1])))
    return out


def make_patch(
    config,
    cache,
    site: str,
    heads: Sequence[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> Patch:
    """A :class:`Patch` of ``site`` from ``cache`` (see :meth:`Intervention.patch`)."""
    config = config_of(config, "Intervention.patch")
    if site not in SITES:
        raise ValueError(f"Intervention.patch: unknown site {site!r}; known sites: {SITES}")
    if heads is not None and layers is not None:
        raise ValueError("Intervention.patch: give heads=[(layer, head), ...] or layers=[...], "
                         "not both")
    if heads is not None and site not in HEAD_AXIS:
        raise ValueError(f"Intervention.patch: site {site!r} has no head axis; use layers=")
    final = SITE_TABLE[site].final
    if final and heads is None and layers is None:
        layers = (config.n_layers,)  # the final norm: its one layer
    if heads is None and layers is None:
        raise ValueError("Intervention.patch: choose heads=[(layer, head), ...] or layers=[...]")
    n = _heads_of(site, config) if site in HEAD_AXIS else 0
    if heads is not None:
        heads = head_pairs(heads, config, "patch heads")
        for layer, head in heads:
            _check_head(config, "patch heads", layer, head, n)
        heads = [(layer % config.n_layers, head) for layer, head in heads]
        use_layers = tuple(sorted({int(layer) for layer, _ in heads}))
    elif final:
        use_layers = tuple(int(x) for x in layers)
        if use_layers != (config.n_layers,):
            raise ValueError(f"Intervention.patch: {site!r} is the final norm's, at layer "
                             f"{config.n_layers} only (leave layers out), got {use_layers}")
    else:
        use_layers = tuple(int(x) for x in layers)
        for layer in use_layers:
            if not -config.n_layers <= layer < config.n_layers:
                raise ValueError(f"Intervention.patch layers: layer {layer} out of range "
                                 f"[0, {config.n_layers})")
        use_layers = tuple(layer % config.n_layers for layer in use_layers)
    if len(set(use_layers)) != len(use_layers):
        raise ValueError(f"Intervention.patch layers: repeated layer in {use_layers}")
    if len(use_layers) == 1:
        value = jnp.asarray(cache[site, use_layers[0]])[None]
    else:
        value = jnp.stack([cache[site, layer] for layer in use_layers])
    nd = value.ndim - 1
    pos_axis = POS_AXIS[site]
    seq = value.shape[1 + pos_axis]
    mask_shape = [len(use_layers)] + [1] * nd
    where = None  # built in numpy: no device op per head or position
    if heads is not None:
        mask_shape[1 + HEAD_AXIS[site]] = n
        where = np.zeros(mask_shape, bool)
        for layer, head in heads:
            idx = [use_layers.index(int(layer))] + [0] * nd
            idx[1 + HEAD_AXIS[site]] = int(head)
            where[tuple(idx)] = True
    if positions is not None:
        pshape = [1] * (nd + 1)
        pshape[1 + pos_axis] = seq
        pm = np.zeros(pshape, bool)
        for p in positions:
            if not -seq <= int(p) < seq:
                raise ValueError(f"Intervention.patch positions: {p} out of range for length {seq}")
            pm[(0,) * (1 + pos_axis) + (int(p),)] = True
        where = pm if where is None else np.logical_and(where, pm)
    static = use_layers if site in OPTIONAL_SITES else None
    return Patch(site=site, layers=np.asarray(use_layers, np.int32), value=value,
                 where=None if where is None else jnp.asarray(where), static_layers=static)


def _pos_mask(w: jax.Array | None, z: jax.Array) -> jax.Array | float:
    """``[batch|1, pos]`` mask -> ``[batch|1, pos, 1, 1]`` in ``z``'s dtype (1.0 if None)."""
    if w is None:
        return 1.0
    if w.ndim == 1:
        w = w[None]
    if w.shape[-1] != z.shape[1]:
        raise ValueError(f"position mask of length {w.shape[-1]} for a sequence of {z.shape[1]}")
    return w.astype(z.dtype)[:, :, None, None]


class InterventionHooks(Hooks):
    """Applies an :class:`Intervention` at the model's sites (built by ``.hooks(config)``).

    In a scanned run of layers (:meth:`for_layers`) the static choices (which patches are
    computed, whether attention is edited) are read at the run's first layer ``rep`` (the
    run's layers share them by construction) and ``layer`` indexes the per-layer arrays as a
    traced scalar."""

    def __init__(self, iv: Intervention, config, inner: Hooks | None = None,
                 rep: int | None = None):
        self.iv = iv
        self.config = config
        self.inner = inner
        self.rep = rep
        self._patches: dict[str, list[int]] = {}  # site -> indices into iv.patches
        for j, p in enumerate(iv.patches):
            self._patches.setdefault(p.site, []).append(j)
        layers = iv.edit_layers
        self._edit_layers = set(range(config.n_layers) if layers is None else layers)

    def _static(self, layer) -> int:
        """The layer the static choices are read at."""
        return layer if self.rep is None else self.rep

    def wants(self, site: str, layer: int) -> bool:
        at = self._static(layer)
        if any(self.iv.patches[j].computed_at(at) for j in self._patches.get(site, ())):
            return True
        return self.inner is not None and self.inner.wants(site, layer)

    def layer_program(self, layer: int):
        return (tuple(p.computed_at(layer) for p in self.iv.patches),
                layer in self._edit_layers,
                () if self.inner is None else self.inner.layer_program(layer))

    def for_layers(self, start: int, stop: int) -> Hooks | None:
        inner = None
        if self.inner is not None:
            inner = self.inner.for_layers(start, stop)
            if inner is None:
                return None
        return InterventionHooks(self.iv, self.config, inner, rep=start)

    def scan_outputs(self):
        return {} if self.inner is None else self.inner.scan_outputs()

    def scan_keep(self, layers, outputs):
        return {} if self.inner is None else self.inner.scan_keep(layers, outputs)

    def scan_collect(self, layers, outputs) -> None:
        if self.inner is not None:
            self.inner.scan_collect(layers, outputs)

    def site(self, site: str, layer: int, value: jax.Array) -> jax.Array:
        iv = self.iv
        at = self._static(layer)
        for j in self._patches.get(site, ()):
            p = iv.patches[j]
            if p.computed_at(at):
                value = p.apply_at(layer, value, f"patches[{j}]")
        if site == "z":
            value = self._edit_z(layer, value)
        if self.inner is not None:
            value = self.inner.site(site, layer, value)
        return value

    def _edit_z(self, layer: int, z: jax.Array) -> jax.Array:
        iv = self.iv
        dt = z.dtype
        if iv.gate is not None:
            g = iv.gate[layer].astype(dt)[None, None, :, None]  # [1, 1, h, 1]
            if iv.gate_baseline is None:
                z = g * z
            else:
                z = g * z + (1 - g) * iv.gate_baseline[layer].astype(dt)[None]
        if iv.mix_a is not None:
            am = iv.mix_a[layer].astype(dt)[None, None, :, None] * _pos_mask(iv.mix_where, z)
            z = (1 - am) * z + am * iv.mix_v[layer].astype(dt)[None, None]
        if iv.offset is not None:
            z = z + _pos_mask(iv.offset_where, z) * iv.offset[layer].astype(dt)[None, None]
        return z

    def attention_edit(self, layer: int) -> AttentionEdit | None:
        iv = self.iv
        inner = None if self.inner is None else self.inner.attention_edit(layer)
        if self._static(layer) not in self._edit_layers or (
            iv.prob_transform is None and iv.mask is None and iv.q_positions is None
            and iv.kv_positions is None and iv.key_positions is None
        ):
            return inner
        transform = None
        if iv.prob_transform is not None:
            fn, params, heads = iv.prob_transform, iv.prob_params, iv.prob_heads

            def transform(p):
                new = fn(p, params, layer)
                if heads is None:
                    return new
                w = heads[layer][None, :, None, None]
                if w.dtype == jnp.bool_:
                    return jnp.where(w, new, p)
                w = w.astype(p.dtype)
                return w * new + (1 - w) * p

            if hasattr(fn, "fused"):  # a transform a fused kernel can apply (ACT)
                transform.fused_act = fn.fused(params, None if heads is None else heads[layer])
        if inner is not None and inner.prob_transform is not None:
            first, second = transform, inner.prob_transform
            transform = second if first is None else (lambda p: second(first(p)))

        def pick(a, b):
            return a if a is not None else b

        key_positions = None
        if iv.key_positions is not None:
            fn, kparams = iv.key_positions, iv.key_params

            def key_positions(q, k):
                return fn(q, k, kparams, layer)

        inner = inner or AttentionEdit()
        return AttentionEdit(
            mask=pick(iv.mask, inner.mask),
            q_positions=pick(iv.q_positions, inner.q_positions),
            kv_positions=pick(iv.kv_positions, inner.kv_positions),
            prob_transform=transform,
            key_positions=pick(key_positions, inner.key_positions),
        )

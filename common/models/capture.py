"""Capture by site name: ``logits, cache = run_with_cache(model, input_ids, names_filter=...)``.

Only the requested sites are kept (and the optional ones, ``attn_scores``, ``pattern`` and
``head_out``, only computed where requested): a capture of ``z`` runs the same fused attention
as the plain forward and merely returns an array it computes anyway. ``head_out`` is derived
from ``z`` and ``W_O`` after the forward; ``attn_scores`` and ``pattern`` switch the layers
that capture them (only those) to the reference attention path. ``layers`` selects blocks; the
final norm's site (``ln_final_scale``, at layer ``n_layers``) is kept whenever it is named.

Everything runs under one ``jax.jit`` keyed on the model's graph definition, the names and
the intervention's static fields: changing an intervention's values does not retrace. The
first jitted run turns on the persistent compilation cache (:mod:`common.models.compile_cache`),
so a second process does not compile the same program again.

A model sharded over a mesh (``load_pretrained(path, mesh=...)``) is probed with explicit
shardings: the ids split on batch, the model's named activations placed by its rules (as in a
train step), every captured value split on batch and heads (:data:`SITE_LOGICAL`).

``model(ids)`` (:func:`call`) runs this jitted forward when called from plain Python, and the
forward inline when called inside a JAX transformation of the caller's (``jax.jit``,
``jax.grad``, ``nnx.jit``, ``vmap``: some input or parameter is a tracer), so it is as fast as
:func:`forward` from the second call and still traceable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.attention.hooks import (
    FINAL_SITES,
    NO_HOOKS,
    OPTIONAL_SITES,
    SITE_AXES,
    SITES,
    Hooks,
    resolve_hooks,
)
from common.attention.masks import Mask
from common.models.activation_cache import ActivationCache
from common.models.activation_sharding import activation_sharding
from common.models.compile_cache import enable as enable_compilation_cache

NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


def resolve_sites(names_filter: NamesFilter) -> tuple[str, ...]:
    """Normalise a names filter to a sorted tuple of site names.

    ``None`` selects every site except the expensive optional ones
    (:data:`~common.attention.hooks.OPTIONAL_SITES`), which must be named; a string or a list
    names sites; a callable is asked ``fn(site) -> bool`` for every site.
    """
    if names_filter is None:
        return tuple(s for s in SITES if s not in OPTIONAL_SITES)
    if callable(names_filter):
        return tuple(s for s in SITES if names_filter(s))
    names = (names_filter,) if isinstance(names_filter, str) else tuple(names_filter)
    for n in names:
        if n not in SITES:
            raise ValueError(f"names_filter: unknown site {n!r}; known sites: {SITES}")
    return tuple(s for s in SITES if s in names)


def resolve_layer(layer: int, n_layers: int, what: str = "layers") -> int:
    """One layer index, negative ones counted from the end (``-1``: the last layer)."""
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise TypeError(f"{what}: a layer index must be an int, got {layer!r}")
    layer = int(layer)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"{what}: layer {layer} out of range [0, {n_layers}) (or -{n_layers} .. -1 "
                         "from the end)")
    return layer % n_layers


def resolve_layers(layers: Iterable[int] | int | None, n_layers: int) -> tuple[int, ...]:
    """``None`` -> every layer; else a sorted tuple, checked against ``n_layers`` (negative
    indices count from the end: ``-1`` is the last layer)."""
    if layers is None:
        return tuple(range(n_layers))
    layers = (layers,) if isinstance(layers, int | np.integer) else tuple(layers)
    return tuple(sorted({resolve_layer(x, n_layers) for x in layers}))


# Optional sites the capture derives after the forward instead of computing them in it.
_DERIVED = ("head_out",)


class CaptureHooks(Hooks):
    """Records the values of ``sites`` at ``layers`` (after ``inner`` edited them); the final
    sites (:data:`~common.attention.hooks.FINAL_SITES`) whatever ``layers`` says.

    In a scanned run of layers (``for_layers``) the values leave the scan as its outputs and
    are stored per layer by ``scan_collect``."""

    def __init__(self, sites: Iterable[str], layers: Iterable[int], inner: Hooks = NO_HOOKS):
        self.sites = frozenset(sites)
        self.layers = frozenset(layers)
        self.inner = inner
        self.store: dict[tuple[str, int], jax.Array] = {}

    def _takes(self, site: str, layer: int) -> bool:
        return site in self.sites and (layer in self.layers or site in FINAL_SITES)

    def wants(self, site: str, layer: int) -> bool:
        if site in OPTIONAL_SITES and site not in _DERIVED and self._takes(site, layer):
            return True
        return self.inner.wants(site, layer)

    def site(self, site: str, layer: int, value: jax.Array) -> jax.Array:
        value = self.inner.site(site, layer, value)
        if self._takes(site, layer):
            self.store[(site, layer)] = value
        return value

    def attention_edit(self, layer: int):
        return self.inner.attention_edit(layer)

    def layer_program(self, layer: int):
        # Only the optional sites change the program; the others are recorded at the chosen
        # layers of one scan (``scan_keep``), so a capture does not cut the stack into runs.
        return (tuple(sorted(s for s in self.sites if s in OPTIONAL_SITES and s not in _DERIVED
                             and self._takes(s, layer))),
                self.inner.layer_program(layer))

    def for_layers(self, start: int, stop: int) -> Hooks | None:
        inner = self.inner.for_layers(start, stop)
        return None if inner is None else _RunCapture(self, start, inner)


class _RunCapture(Hooks):
    """:class:`CaptureHooks` for one run of layers with one program (``rep``: its first layer,
    where the static choices are read); ``layer`` may be traced."""

    def __init__(self, parent: CaptureHooks, rep: int, inner: Hooks):
        self.parent, self.rep, self.inner = parent, rep, inner
        # Non-optional sites are recorded at every layer of the run and kept at the chosen ones.
        self.taken = {s for s in parent.sites
                      if s not in OPTIONAL_SITES or parent._takes(s, rep)}
        self.pending: dict[str, jax.Array] = {}

    def wants(self, site: str, layer) -> bool:
        if site in OPTIONAL_SITES and site not in _DERIVED and site in self.taken:
            return True
        return self.inner.wants(site, layer)

    def site(self, site: str, layer, value: jax.Array) -> jax.Array:
        value = self.inner.site(site, layer, value)
        if site in self.taken:
            self.pending[site] = value
        return value

    def attention_edit(self, layer):
        return self.inner.attention_edit(layer)

    def scan_outputs(self):
        own, self.pending = self.pending, {}
        return {"own": own, "inner": self.inner.scan_outputs()}

    def scan_keep(self, layers: tuple[int, ...], outputs):
        own = {site: tuple(i for i in layers if self.parent._takes(site, i))
               for site in outputs["own"]}
        return {"own": own, "inner": self.inner.scan_keep(layers, outputs["inner"])}

    def scan_collect(self, layers: tuple[int, ...], outputs) -> None:
        for site, stacked in outputs["own"].items():
            kept = tuple(i for i in layers if self.parent._takes(site, i))
            for j, layer in enumerate(kept):
                self.parent.store[(site, layer)] = stacked[j]
        self.inner.scan_collect(layers, outputs["inner"])


def capture_store(model, input_ids, positions, mask, intervention, sites, layers, last_only):
    """The un-jitted capture: ``(logits, {(site, layer): value})`` (arguments as
    :func:`run_with_cache`, ``sites``/``layers`` already resolved)."""
    inner = resolve_hooks(intervention, model.config)
    keep = set(sites)
    capture_sites = set(sites)
    if "head_out" in keep:
        capture_sites.add("z")
    hooks = CaptureHooks(capture_sites, layers, inner)
    logits, _ = model.forward(input_ids, positions=positions, mask=mask, hooks=hooks,
                              last_only=last_only)
    store = hooks.store
    if "head_out" in keep:
        for layer in layers:
            if ("head_out", layer) in store:  # the intervention computed it in the forward
                continue
            wo = model.blocks.attn.o_kernel[...][layer]
            z = store[("z", layer)]
            store[("head_out", layer)] = jnp.einsum("bshk,hkd->bshd", z, wo.astype(z.dtype))
    return logits, {k: v for k, v in store.items() if k[0] in keep}


SITE_LOGICAL = {"batch": "batch", "head": "heads", "kv_head": "kv_heads"}
"""Site axis name (:data:`~common.attention.hooks.SITE_AXES`) -> logical axis of the sharding
rules: a sharded model's captures are split on batch and heads, the rest replicated."""


def site_logical_names(site: str, leading: tuple = ()) -> tuple:
    """Logical names of one captured value of ``site`` (after ``leading`` axes, e.g. a layer
    axis ``(None,)``)."""
    return tuple(leading) + tuple(SITE_LOGICAL.get(a) for a in SITE_AXES[site])


def place_sites(store: dict, placement, leading: tuple = ()) -> dict:
    """``{(site, layer): value}`` with each value constrained to its sites' placement (inside a
    trace); the store itself when ``placement`` is None."""
    if placement is None:
        return store
    return {k: jax.lax.with_sharding_constraint(v, placement(site_logical_names(k[0], leading),
                                                             v.shape))
            for k, v in store.items()}


def model_placement(model, state):
    """The placement of a model sharded over a mesh (by the rules it was loaded with,
    ``model.sharding_rules``), or None on one device."""
    from common.sharding.rules import placement_of

    return placement_of(state, getattr(model, "sharding_rules", None))


def placed_ids(ids: jax.Array, placement) -> jax.Array:
    """Token ids ``[batch, seq]`` put on the mesh split on batch (unchanged without one)."""
    if placement is None:
        return ids
    return jax.device_put(ids, placement(("batch", "seq"), ids.shape))


@functools.partial(jax.jit, static_argnames=("graphdef", "sites", "layers", "last_only",
                                             "placement"))
def _capture_jit(graphdef, state, input_ids, positions, mask, intervention, *, sites, layers,
                 last_only, placement=None):
    model = nnx.merge(graphdef, state)
    with activation_sharding(placement):
        logits, store = capture_store(model, input_ids, positions, mask, intervention, sites,
                                      layers, last_only)
    return logits, place_sites(store, placement)


def run_with_cache(
    model,
    input_ids: jax.Array,
    *,
    names_filter: NamesFilter = None,
    layers: Iterable[int] | int | None = None,
    intervention: Any = None,
    positions: jax.Array | None = None,
    mask: Mask | None = None,
    last_only: bool = False,
    jit: bool = True,
) -> tuple[jax.Array, ActivationCache]:
    """Run the model and keep the requested sites.

    Args:
      model: a :class:`~common.models.DecoderLM`.
      input_ids: ``[batch, seq]`` int token ids.
      names_filter: site name(s) or ``fn(site) -> bool``; the sites are
        :data:`common.attention.hooks.SITE_TABLE`. None: every site but the optional ones.
      layers: layers to capture (default all).
      intervention: a ``common.interp.Intervention`` applied during the
        run (captured values are the edited ones), or a custom ``Hooks`` (runs un-jitted).
      positions, mask: as for ``DecoderLM.forward``.
      last_only: logits of the last position only.
      jit: run under ``jax.jit`` (default).

    Returns:
      ``(logits [batch, seq|1, vocab] float32, ActivationCache)``.
    """
    sites = resolve_sites(names_filter)
    layers = resolve_layers(layers, model.config.n_layers)
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    if isinstance(intervention, Hooks) or not jit:
        logits, store = capture_store(model, input_ids, positions, mask, intervention, sites, layers,
                                 last_only)
        return logits, ActivationCache(store, n_layers=model.config.n_layers)
    logits, store = _run_jit(model, nnx.split(model), input_ids, positions, mask, intervention,
                             sites, layers, last_only)
    return logits, ActivationCache(store, n_layers=model.config.n_layers)


def _run_jit(model, split, input_ids, positions, mask, intervention, sites, layers, last_only):
    if intervention is not None and hasattr(intervention, "validate"):
        intervention.validate(model.config)  # clear errors before tracing
    enable_compilation_cache()
    graphdef, state = split
    placement = model_placement(model, state)
    return _capture_jit(graphdef, state, placed_ids(input_ids, placement), positions, mask,
                        intervention, sites=sites, layers=layers, last_only=last_only,
                        placement=placement)


def _has_tracer(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def call(
    model,
    input_ids: jax.Array,
    *,
    positions: jax.Array | None = None,
    mask: Mask | None = None,
    intervention: Any = None,
) -> jax.Array:
    """``model(input_ids, ...)``: logits ``[batch, seq, vocab]``.

    From plain Python: the jitted :func:`forward` (compiled once per shape and intervention
    structure, then reused; the same numbers). Inside a transformation of the caller's (any of
    the inputs, the intervention's arrays or the model's parameters is a tracer), or with a
    custom :class:`~common.attention.hooks.Hooks`: the forward inline, as part of the caller's
    trace.
    """
    if isinstance(intervention, Hooks):
        return model.forward(input_ids, positions=positions, mask=mask, hooks=intervention)[0]
    split = nnx.split(model)
    if _has_tracer((split[1], input_ids, positions, mask, intervention)):
        hooks = resolve_hooks(intervention, model.config)
        return model.forward(input_ids, positions=positions, mask=mask, hooks=hooks)[0]
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    return _run_jit(model, split, input_ids, positions, mask, intervention, (),
                    tuple(range(model.config.n_layers)), False)[0]


def forward(
    model,
    input_ids: jax.Array,
    *,
    intervention: Any = None,
    positions: jax.Array | None = None,
    mask: Mask | None = None,
    last_only: bool = False,
) -> jax.Array:
    """Jitted ``model(input_ids, intervention=...)``: ``logits [batch, seq|1, vocab]``.

    Changing only the intervention's array values reuses the compiled program.
    """
    return run_with_cache(model, input_ids, names_filter=(), intervention=intervention,
                          positions=positions, mask=mask, last_only=last_only)[0]

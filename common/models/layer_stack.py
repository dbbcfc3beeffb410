"""The blocks of a decoder as one parameter stack, and the forward over it.

Every block parameter is stored once with a leading ``layers`` axis (logical axis name
``layers``, replicated by the sharding rules): ``q_kernel [n_layers, d_model, heads,
head_dim]`` and so on. :func:`run_layers` runs blocks ``start .. stop-1`` over that stack:

* **Scanned** (``ModelConfig.scan_layers``, the default): the layers are cut into runs of
  consecutive layers on which the hooks do the same static thing
  (:meth:`~common.attention.hooks.Hooks.layer_program`: which optional sites they compute,
  whether attention is edited, what they record), and each run is one ``jax.lax.scan``
  whose ``xs`` are the run's slices of the stack (and the layer indices). Without hooks that is one scan over
  every layer, so the compiled program does not grow with depth; an intervention or capture
  at a few layers cuts the stack into a few runs. Runs were chosen over one scan with a
  per-layer flag and ``lax.cond``: a ``cond`` keeps both branches in the program, and under
  ``vmap`` (sweeps, populations) it computes both, so the reference attention path of a
  probability transform would be paid at every layer; runs pay each program only where it
  applies and stay exact. The weights enter the scan as ``xs`` rather than being indexed
  inside the body from the closed-over stack: under reverse-mode AD a slice made inside the
  body is a residual that the forward loop stacks into a fresh ``[n_layers, ...]`` copy of
  every weight (a full extra write and read of the model per gradient), whereas a slice of
  ``xs`` is forwarded to the backward loop as the stack itself (the soft-injection gradient
  of SmolLM2, one 8-token prompt, on this 2-core CPU: 252 -> 186 ms).
* **Unrolled** (``scan_layers=False``): a Python loop, one program per layer, for debugging;
  the same numbers.

Captured sites leave a scan as its stacked outputs and interventions read their per-layer
slices with the traced layer (see the scanning notes of :class:`~common.attention.hooks.Hooks`).
Hooks that need Python-int layers (custom ``Hooks`` subclasses that do not opt in) run
unrolled. A KV cache is carried whole through the scan and only the new tokens' slots are
written at each layer.

Rematerialisation (``ModelConfig.remat``) wraps each layer's step in ``jax.checkpoint`` with a
named policy (:data:`REMAT_POLICIES`), as MaxText's ``remat_policy`` does; it changes what
the backward pass keeps, never a number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.attention.hooks import Hooks
from common.attention.layer import LayerKV
from common.attention.masks import Mask
from common.models.activation_sharding import constrain

RESID_NAMES = ("batch", "seq", None)
"""Logical names of the residual stream ``[batch, seq, d_model]`` entering each layer (its
``d_model`` is not split: ``embed`` names the parameters' FSDP axis)."""

LAYERS_AXIS = "layers"
"""Logical name of the stack's leading axis (never sharded by the default rules)."""

_CP = jax.checkpoint_policies
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no jax.checkpoint: the backward keeps every intermediate
    "full": _CP.nothing_saveable,  # keep only each layer's input; recompute the rest
    "save_dots": _CP.checkpoint_dots,  # keep matmul outputs, recompute elementwise work
    "save_dots_no_batch": _CP.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
    **{name: getattr(_CP, name) for name in (
        "nothing_saveable", "everything_saveable", "checkpoint_dots",
        "dots_with_no_batch_dims_saveable", "dots_saveable")},
}
"""Rematerialisation policies by name: ``none``, ``full``, ``save_dots``,
``save_dots_no_batch``, and JAX's own names from ``jax.checkpoint_policies``."""


def check_remat(name: str) -> None:
    """Raise ``ValueError`` for an unknown policy name."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"ModelConfig.remat: unknown policy {name!r}; known: "
                         f"{', '.join(REMAT_POLICIES)}")


def stacked(make: Callable[[nnx.Rngs], nnx.Module], n_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """``make(rngs)`` built ``n_layers`` times as one module whose parameters have a leading
    ``layers`` axis (independent initialisation per layer; ``layers`` prepended to each
    parameter's logical axes)."""

    @nnx.split_rngs(splits=n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=n_layers,
              transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    def build(r):
        return make(r)

    return build(rngs)


def _index(a: jax.Array, layer) -> jax.Array:
    if isinstance(layer, int):
        return a[layer]
    return jax.lax.dynamic_index_in_dim(a, layer, 0, keepdims=False)


def layer_params(params: Any, layer) -> Any:
    """The parameters of one layer (``layer`` an int or a traced int32) from the stack."""
    return jax.tree.map(lambda a: _index(a, layer), params)


def unstack(blocks: nnx.Module) -> tuple[Any, ...]:
    """Every layer's parameters sliced out of the stack (a copy of the weights): for loops that
    run the layers many times with the same weights (decoding), where slicing the stack inside
    the loop would copy every layer's weights at every step. MaxText's inference also runs
    unscanned layers."""
    _, params = nnx.split(blocks)
    n = jax.tree.leaves(params)[0].shape[0]
    return tuple(layer_params(params, i) for i in range(n))


def layer_runs(hooks: Hooks, start: int, stop: int, scan: bool) -> list[tuple[int, int]]:
    """``[(a, b), ...]``: consecutive layers of ``start .. stop-1`` with one hook program
    (each layer alone when not scanning)."""
    if not scan:
        return [(i, i + 1) for i in range(start, stop)]
    runs: list[tuple[int, int]] = []
    prev = object()
    for i in range(start, stop):
        prog = hooks.layer_program(i)
        if runs and prog == prev:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
        prev = prog
    return runs


def run_layers(
    blocks: nnx.Module,
    x: jax.Array,
    *,
    positions: jax.Array,
    mask: Mask | None,
    hooks: Hooks,
    start: int,
    stop: int,
    scan: bool,
    remat: str = "none",
    cache: LayerKV | None = None,
    cache_index: jax.Array | None = None,
    per_layer: tuple[Any, ...] | None = None,
) -> tuple[jax.Array, LayerKV | None]:
    """Run blocks ``start .. stop-1`` of the stack ``blocks`` on ``x [batch, seq, d_model]``.

    ``cache``: the stacked KV cache ``[n_layers, batch, max_len, kv_heads, head_dim]`` (new
    keys/values are written at ``cache_index``), or with ``per_layer`` a tuple of one
    :class:`LayerKV` per layer. ``per_layer``: each layer's parameters already sliced out of
    the stack (:func:`unstack`), run unrolled: a decode loop slices the weights once instead
    of at every token, and keeps one cache buffer per layer (updating one stacked buffer in a
    loop can cost XLA a copy of the whole cache per layer). Returns ``(x, cache)``.
    """
    graphdef, params = nnx.split(blocks)
    if per_layer is not None or _is_per_layer(cache):
        if per_layer is None or not _is_per_layer(cache) and cache is not None:
            raise ValueError("run_layers: a per-layer cache needs per_layer parameters, and "
                             "per_layer parameters a per-layer cache (or none)")
        scan = False
        if len(per_layer) != jax.tree.leaves(params)[0].shape[0]:
            raise ValueError(f"run_layers: per_layer has {len(per_layer)} layers, the stack "
                             f"{jax.tree.leaves(params)[0].shape[0]}")
    n_new = x.shape[1]

    def step(x, kv, layer, layer_hooks, checkpoint, p=None):
        """One layer: ``(x, kv, outputs)``; ``layer`` an int or traced; ``p`` its parameters
        when the caller has sliced them (a scan's ``xs``)."""

        def body(x, p, layer_kv):
            x = constrain(x, RESID_NAMES)
            block = nnx.merge(graphdef, p)
            y, new_kv = block(x, positions=positions, mask=mask, cache=layer_kv,
                              cache_index=cache_index, hooks=layer_hooks, layer=layer)
            return y, new_kv, layer_hooks.scan_outputs()

        if checkpoint:
            body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
        if kv is None:
            layer_kv = None
        elif _is_per_layer(kv):
            layer_kv = kv[layer]
        else:
            layer_kv = LayerKV(_index(kv.k, layer), _index(kv.v, layer))
        if p is None:
            p = layer_params(params, layer) if per_layer is None else per_layer[layer]
        y, new_kv, outs = body(x, p, layer_kv)
        if kv is None:
            pass
        elif _is_per_layer(kv):
            kv = kv[:layer] + (new_kv,) + kv[layer + 1:]
        else:
            kv = LayerKV(*(_write_new(full, new, layer, cache_index, n_new)
                           for full, new in zip(kv, new_kv, strict=True)))
        return y, kv, outs

    def scan_run(x, kv, layers: tuple[int, ...], run_hooks: Hooks):
        """Layers ``layers`` (consecutive, one program) as one ``lax.scan``. The values the
        hooks keep leave it in carried buffers ``[kept + 1, ...]``: layer ``i`` writes to its
        slot, or to the spare last slot when it is not kept."""
        first = layers[0]
        checkpoint = remat != "none"
        shapes = jax.eval_shape(
            lambda x, kv: step(x, kv, jnp.int32(first), run_hooks, False)[2], x, kv)
        keep = run_hooks.scan_keep(layers, shapes)
        buffers = _tree_map_keep(lambda kp, sh: jnp.zeros((len(kp) + 1,) + sh.shape, sh.dtype),
                                 keep, shapes)
        slots = _tree_map_keep(
            lambda kp, _: jnp.asarray([kp.index(i) if i in kp else len(kp) for i in layers],
                                      jnp.int32), keep, shapes)

        def body(carry, xs):
            layer, p = xs
            x, kv, bufs = carry
            x, kv, outs = step(x, kv, layer, run_hooks, checkpoint, p)
            bufs = _tree_map_keep(
                lambda _, buf, v, slot: jax.lax.dynamic_update_index_in_dim(
                    buf, v.astype(buf.dtype), slot[layer - first], 0),
                keep, bufs, outs, slots)
            return (x, kv, bufs), None

        n = jax.tree.leaves(params)[0].shape[0]
        run_params = params if (first, len(layers)) == (0, n) else jax.tree.map(
            lambda a: jax.lax.slice_in_dim(a, first, first + len(layers)), params)
        (x, kv, buffers), _ = jax.lax.scan(body, (x, kv, buffers),
                                           (jnp.asarray(layers, jnp.int32), run_params))
        run_hooks.scan_collect(layers, _tree_map_keep(lambda kp, buf: buf[:len(kp)],
                                                      keep, buffers))
        return x, kv

    kv = cache
    for a, b in layer_runs(hooks, start, stop, scan):
        layers = tuple(range(a, b))
        run_hooks = hooks.for_layers(a, b)
        if run_hooks is None:
            # Hooks that need Python-int layers: unrolled with them as they are (no remat:
            # they may keep values, which must not leave a checkpointed function).
            for i in layers:
                x, kv, _ = step(x, kv, i, hooks, False)
        elif len(layers) == 1:
            x, kv, outs = step(x, kv, a, run_hooks, remat != "none")
            keep = run_hooks.scan_keep(layers, outs)
            run_hooks.scan_collect(layers, _tree_map_keep(lambda kp, v: v[None][:len(kp)],
                                                          keep, outs))
        else:
            x, kv = scan_run(x, kv, layers, run_hooks)
    return x, kv


def _is_per_layer(kv) -> bool:
    """A cache given as one :class:`LayerKV` per layer (decoding with ``per_layer``), not the
    stacked ``LayerKV``."""
    return isinstance(kv, tuple) and not isinstance(kv, LayerKV)


def _tree_map_keep(fn, keep, *trees):
    """``jax.tree.map`` over a :meth:`~common.attention.hooks.Hooks.scan_keep` tree (its
    tuples of layers are leaves) and trees of that structure."""
    return jax.tree.map(fn, keep, *trees, is_leaf=lambda t: isinstance(t, tuple))


def _write_new(full: jax.Array, layer_new: jax.Array, layer, index, n_new: int) -> jax.Array:
    """Write the ``n_new`` slots from ``index`` of one layer's updated cache ``[batch,
    max_len, kv_heads, head_dim]`` into the stacked cache ``full`` at ``layer``."""
    b, _, h, d = layer_new.shape
    idx = jnp.asarray(index, jnp.int32)
    zero = jnp.zeros((), jnp.int32)  # one index type under 64-bit JAX
    new = jax.lax.dynamic_slice(layer_new, (zero, idx, zero, zero), (b, n_new, h, d))
    return jax.lax.dynamic_update_slice(full, new[None].astype(full.dtype),
                                        (jnp.asarray(layer, jnp.int32), zero, idx, zero, zero))

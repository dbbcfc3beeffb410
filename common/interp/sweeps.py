"""Sweeps over heads: activation patching, ablation, direct logit attribution, attribution
patching. Each returns a :class:`~common.labelled.Labelled` ``[layer, head]`` (or
``[layer, head, pos]``) array; :func:`activation_patching` and :func:`attribution_patching`
return a :class:`~common.interp.results.PatchingResult` on one scale (the change of the metric
from the corrupted run, optionally normalised), while :func:`patch_sweep` and
:func:`head_ablation_sweep` return the metric of each variant run.

The exact sweeps are one jitted program, not a Python loop of forwards. For each layer
``l`` (``lax.map``) the residual entering ``l`` is taken from one base run (the layers
below are unchanged, so they are not recomputed), the variants (one per head, or per head
and position) run ``vmap``-batched through block ``l`` with the patch and then through the
blocks above (a ``lax.scan`` over the stacked block parameters that skips blocks ``<= l``
with ``lax.cond``), and the metric reads only the logits it needs (see
:class:`~common.interp.metrics.LogitMetric`). One compiled program serves every layer.

On a model sharded over a mesh (``load_pretrained(path, mesh=...)``) the same programs run with
explicit shardings: a sweep's variants split over the ``data`` axis, the captured values and
gradients of attribution patching split on batch and heads (by the model's rules).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from common.attention.hooks import HEAD_AXIS, NO_HOOKS, OPTIONAL_SITES, POS_AXIS, SITE_AXES, Hooks
from common.attention.masks import Mask
from common.interp.metrics import as_metric, evaluate
from common.interp.results import PatchingResult
from common.interp.views import W_O, W_U
from common.labelled import Labelled
from common.models.activation_sharding import activation_sharding
from common.models.capture import (
    capture_store,
    model_placement,
    place_sites,
    placed_ids,
    resolve_layers,
    run_with_cache,
    site_logical_names,
)
from common.models.layer_stack import layer_params


class _PatchSite(Hooks):
    """``value = where(mask, src, value)`` at one site (layer index may be traced)."""

    def __init__(self, site: str, mask: jax.Array, src: jax.Array):
        self.site_name, self.mask, self.src = site, mask, src

    def wants(self, site, layer):  # noqa: ARG002
        return site == self.site_name and site in OPTIONAL_SITES

    def site(self, site, layer, value):  # noqa: ARG002
        if site != self.site_name:
            return value
        return jnp.where(self.mask, self.src.astype(value.dtype), value)


def _default_positions_mask(b: int, s: int, positions, mask):
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    return positions, (Mask(causal=True) if mask is None else mask)


def _variant_masks(site: str, site_shape: tuple[int, ...], per_position: bool) -> jax.Array:
    """Boolean masks ``[V, *site_shape (1 where broadcast)]``, one variant per head (and pos)."""
    nd = len(site_shape)
    ha, pa = HEAD_AXIS[site], POS_AXIS[site]
    n, s = site_shape[ha], site_shape[pa]
    heads = jnp.eye(n, dtype=bool)  # [V=n, n]
    shape = [1] * nd
    shape[ha] = n
    if not per_position:
        return heads.reshape([n] + shape)
    shape[pa] = s
    hp = heads[:, None, :, None] & jnp.eye(s, dtype=bool)[None, :, None, :]  # [n, s, n, s]
    hp = hp.reshape(n * s, n, s)
    if ha < pa:
        return hp.reshape([n * s] + shape)
    return jnp.swapaxes(hp, 1, 2).reshape([n * s] + shape)


def variant_sharding(placement, n_variants: int):
    """Sharding of an array whose leading axis is a sweep's variants: split over the mesh's
    ``data`` axis (where it divides them), the rest replicated; None without a mesh."""
    if placement is None:
        return None
    mesh = placement.mesh
    axis = "data" if n_variants % mesh.shape.get("data", 1) == 0 else None
    return NamedSharding(mesh, PartitionSpec(axis))


@functools.partial(jax.jit, static_argnames=("graphdef", "site", "chunk", "placement"))
def _sweep_jit(graphdef, state, resid_pre, src, masks, metric, positions, mask, *, site, chunk,
               placement=None):
    """``[L, V]`` metric values; ``resid_pre [L, b, s, d]``, ``src [L, *site_shape]``.

    On a mesh (``placement``) the variants are split over the ``data`` axis."""
    model = nnx.merge(graphdef, state)
    var_sh = variant_sharding(placement, masks.shape[0])
    if var_sh is not None:
        masks = jax.lax.with_sharding_constraint(masks, var_sh)
    n_layers = model.config.n_layers
    block_def, stacked = nnx.split(model.blocks)  # the model's own stack: no second copy
    kw = dict(positions=positions, mask=mask, cache=None, cache_index=None)

    def per_layer(layer):
        x = resid_pre[layer]
        src_l = src[layer]
        params_l = layer_params(stacked, layer)

        def variant(m):
            block = nnx.merge(block_def, params_l)
            y, _ = block(x, hooks=_PatchSite(site, m, src_l), layer=layer, **kw)

            def body(y, i):
                def run(y):
                    block = nnx.merge(block_def, layer_params(stacked, i))
                    return block(y, hooks=NO_HOOKS, layer=i, **kw)[0]

                return jax.lax.cond(i > layer, run, lambda y: y, y), None

            y, _ = jax.lax.scan(body, y, jnp.arange(n_layers))
            return evaluate(metric, model, y)

        if chunk is None:
            out = jax.vmap(variant)(masks)
        else:
            out = jax.lax.map(variant, masks, batch_size=chunk)
        return out if var_sh is None else jax.lax.with_sharding_constraint(out, var_sh)

    return jax.lax.map(per_layer, jnp.arange(n_layers))


def _check_site(site: str) -> None:
    if site not in HEAD_AXIS:
        raise ValueError(f"sweep site must be a per-head site {tuple(HEAD_AXIS)}, got {site!r}")


def patch_sweep(
    model,
    base_ids: jax.Array,
    source: jax.Array | float,
    metric,
    *,
    site: str = "z",
    per_position: bool = False,
    positions: jax.Array | None = None,
    mask: Mask | None = None,
    chunk: int | None = None,
) -> Labelled:
    """Run ``base_ids`` once per head (and position), replacing that head's ``site`` value by
    ``source``; return the metric of each run.

    Args:
      base_ids: ``[batch, seq]`` prompt the variants run on.
      source: replacement values ``[n_layers, *site_shape]`` (batch/pos axes may be 1), or a
        scalar (0.0: zero ablation).
      metric: :class:`~common.interp.metrics.LogitMetric` (reads only the logits it needs) or
        ``fn(logits [batch, seq, vocab]) -> scalar``.
      site: a per-head site (``z`` default; ``k``/``v``/``rot_k`` sweep key/value heads;
        ``pattern`` and ``head_out`` force the reference path).
      per_position: one variant per (head, position) instead of per head.
      chunk: evaluate the variants of a layer ``chunk`` at a time (bounds memory).

    Returns:
      ``Labelled [layer, head]`` (``kv_head`` for k/v sites), or ``[layer, head, pos]``.
    """
    args, kw, site_shape = sweep_program(model, base_ids, source, metric, site=site,
                                         per_position=per_position, positions=positions,
                                         mask=mask, chunk=chunk)
    out = _sweep_jit(*args, **kw)
    cfg = model.config
    head_name = "kv_head" if site in ("k", "v", "rot_k") else "head"
    if per_position:
        n, sq = site_shape[HEAD_AXIS[site]], site_shape[POS_AXIS[site]]
        return Labelled(out.reshape(cfg.n_layers, n, sq), ("layer", head_name, "pos"))
    return Labelled(out, ("layer", head_name))


def sweep_program(model, base_ids, source, metric, *, site: str = "z",
                  per_position: bool = False, positions=None, mask=None, chunk=None):
    """``(args, kwargs, site_shape)`` of the one jitted sweep program of :func:`patch_sweep`
    (``_sweep_jit(*args, **kwargs)``; ``_sweep_jit.lower(*args, **kwargs)`` for its compiled
    memory, as ``tools/bench_interp.py`` reports)."""
    _check_site(site)
    base_ids = jnp.asarray(base_ids)
    b, s = base_ids.shape
    cfg = model.config
    positions, mask = _default_positions_mask(b, s, positions, mask)
    graphdef, state = nnx.split(model)
    _, store = jax.eval_shape(
        lambda st: capture_store(nnx.merge(graphdef, st), base_ids, positions, mask, None, (site,),
                                 (0,), True), state)
    site_shape = tuple(store[(site, 0)].shape)
    _, cache = run_with_cache(model, base_ids, names_filter="resid_pre", positions=positions,
                              mask=mask)
    resid = cache.stack("resid_pre").values
    src = jnp.asarray(source, jnp.float32)
    if src.ndim == 0:
        src = jnp.broadcast_to(src, (cfg.n_layers,) + (1,) * len(site_shape))
    if src.ndim != len(site_shape) + 1 or src.shape[0] != cfg.n_layers:
        raise ValueError(f"patch_sweep: source must be [n_layers, {', '.join(SITE_AXES[site])}] "
                         f"(shape {(cfg.n_layers,) + site_shape}), got {src.shape}")
    try:
        # One shape for every source (zeros, means, another run): one compiled program.
        src = jnp.broadcast_to(src, (cfg.n_layers,) + site_shape)
    except ValueError:
        raise ValueError(f"patch_sweep: source {src.shape} does not fit site {site!r} of shape "
                         f"{(cfg.n_layers,) + site_shape}") from None
    masks = _variant_masks(site, site_shape, per_position)
    placement = model_placement(model, state)
    var_sh = variant_sharding(placement, masks.shape[0])
    if var_sh is not None:  # the variants over the data axis, explicitly
        masks = jax.device_put(masks, var_sh)
    args = (graphdef, state, resid, src, masks, as_metric(metric, warn=True), positions, mask)
    return args, dict(site=site, chunk=chunk, placement=placement), site_shape


def _patching_args(name, clean_ids, corrupted_ids, direction, site):
    clean_ids, corrupted_ids = jnp.asarray(clean_ids), jnp.asarray(corrupted_ids)
    if clean_ids.shape != corrupted_ids.shape:
        raise ValueError(f"{name}: clean {clean_ids.shape} and corrupted "
                         f"{corrupted_ids.shape} prompts must have the same shape")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"{name}: direction must be 'denoise' or 'noise', got {direction!r}")
    _check_site(site)
    return clean_ids, corrupted_ids


def activation_patching(
    model,
    clean_ids: jax.Array,
    corrupted_ids: jax.Array,
    metric,
    *,
    site: str = "z",
    per_position: bool = False,
    direction: str = "denoise",
    normalize: bool = False,
    chunk: int | None = None,
) -> PatchingResult:
    """Activation patching per head (and position) between a clean and a corrupted prompt.

    ``direction="denoise"`` runs the corrupted prompt with one head's ``site`` taken from the
    clean run (what restores the behaviour); ``"noise"`` runs the clean prompt with the
    corrupted value (what breaks it). Both prompts must have the same shape.

    Returns:
      a :class:`PatchingResult` ``[layer, head]`` (or ``[layer, head, pos]``): the change of the
      metric from the corrupted run, ``metric(patched) - metric(corrupted)``, divided by
      ``metric(clean) - metric(corrupted)`` with ``normalize`` (clean = 1, corrupted = 0);
      the same quantity :func:`attribution_patching` estimates. ``.clean`` and
      ``.corrupted`` hold the two metric values, ``.patched`` the patched runs' metric.
    """
    clean_ids, corrupted_ids = _patching_args("activation_patching", clean_ids, corrupted_ids,
                                              direction, site)
    base, other = (corrupted_ids, clean_ids) if direction == "denoise" else (clean_ids,
                                                                             corrupted_ids)
    _, cache = run_with_cache(model, other, names_filter=site)
    patched = patch_sweep(model, base, cache.stack(site).values, metric, site=site,
                          per_position=per_position, chunk=chunk)
    m_base = metric_value(model, base, metric)
    m_other = metric_value(model, other, metric)
    clean, corrupted = (m_other, m_base) if direction == "denoise" else (m_base, m_other)
    return PatchingResult.of(patched.values - corrupted, patched.axes, clean, corrupted,
                             method="activation", direction=direction, site=site,
                             normalize=normalize)


def head_ablation_sweep(
    model,
    input_ids: jax.Array,
    metric,
    *,
    kind: str = "zero",
    reference_ids: jax.Array | None = None,
    per_position: bool = False,
    chunk: int | None = None,
) -> Labelled:
    """Ablate each head's ``z`` in turn: ``kind="zero"`` or ``"mean"`` (mean over the batch of
    ``reference_ids``, default ``input_ids``, per position). Returns metric values
    ``Labelled [layer, head]``."""
    if kind == "zero":
        return patch_sweep(model, input_ids, 0.0, metric, per_position=per_position, chunk=chunk)
    if kind != "mean":
        raise ValueError(f"head_ablation_sweep: kind must be 'zero' or 'mean', got {kind!r}")
    ref = input_ids if reference_ids is None else reference_ids
    _, cache = run_with_cache(model, ref, names_filter="z")
    mean = jnp.mean(cache.stack("z").values, axis=1, keepdims=True)
    return patch_sweep(model, input_ids, mean, metric, per_position=per_position, chunk=chunk)


def metric_value(model, input_ids: jax.Array, metric, *, intervention: Any = None) -> jax.Array:
    """The metric on one (possibly intervened) forward: the sweep's baseline."""
    n = model.config.n_layers
    _, cache = run_with_cache(model, input_ids, names_filter="resid_post", layers=n - 1,
                              intervention=intervention)
    return evaluate(metric, model, cache["resid_post", n - 1])


# ------------------------------------------------------------------ attribution patching


class _AddAt(Hooks):
    """Adds ``deltas[layer]`` (``deltas [L, *site_shape]``) to ``site`` and records the
    (pre-delta) values; scans over layers (the values leave the scan as its outputs)."""

    def __init__(self, site: str, deltas: jax.Array):
        self.site_name, self.deltas = site, deltas
        self.store: dict[int, jax.Array] = {}
        self.pending: dict[str, jax.Array] = {}

    def wants(self, site, layer):  # noqa: ARG002
        return site == self.site_name and site in OPTIONAL_SITES

    def site(self, site, layer, value):
        if site != self.site_name:
            return value
        self.pending["value"] = value
        return value + self.deltas[layer].astype(value.dtype)

    def for_layers(self, start, stop):  # noqa: ARG002
        return self

    def scan_outputs(self):
        out, self.pending = self.pending, {}
        return out

    def scan_keep(self, layers, outputs):
        return {"value": layers} if outputs else {}

    def scan_collect(self, layers, outputs):
        for j, layer in enumerate(layers):
            self.store[layer] = outputs["value"][j]


@functools.partial(jax.jit, static_argnames=("graphdef", "site", "placement"))
def _grad_jit(graphdef, state, ids, metric, positions, mask, *, site, placement=None):
    model = nnx.merge(graphdef, state)
    n = model.config.n_layers

    def shapes(st):
        m = nnx.merge(graphdef, st)
        return capture_store(m, ids, positions, mask, None, (site,), (0,), True)[1]

    shp = jax.eval_shape(shapes, state)[(site, 0)]
    deltas = jnp.zeros((n,) + shp.shape, shp.dtype)

    def f(deltas):
        hooks = _AddAt(site, deltas)
        x = model.embed_tokens(ids, positions)
        x = model.run_blocks(x, positions=positions, mask=mask, hooks=hooks)
        return evaluate(metric, model, x), jnp.stack([hooks.store[i] for i in range(n)])

    if placement is not None:
        deltas = jax.lax.with_sharding_constraint(
            deltas, placement(site_logical_names(site, (None,)), deltas.shape))
    with activation_sharding(placement):
        (value, base), grads = jax.value_and_grad(f, has_aux=True)(deltas)
    placed = place_sites({(site, "base"): base, (site, "grads"): grads}, placement, (None,))
    return value, placed[(site, "base")], placed[(site, "grads")]


def site_gradients(model, input_ids: jax.Array, metric, *, site: str = "z"):
    """One forward and one backward: ``(metric, values [L, *site_shape], d metric / d values)``."""
    ids = jnp.asarray(input_ids)
    b, s = ids.shape
    positions, mask = _default_positions_mask(b, s, None, None)
    graphdef, state = nnx.split(model)
    placement = model_placement(model, state)
    return _grad_jit(graphdef, state, placed_ids(ids, placement), as_metric(metric), positions,
                     mask, site=site, placement=placement)


def _attribution(grads, base, src, site: str, per_position: bool) -> jax.Array:
    """Sum ``grad · (src - base)`` over every axis but layer, head (and position)."""
    prod = grads * (jnp.broadcast_to(src, base.shape) - base)
    ha, pa = 1 + HEAD_AXIS[site], 1 + POS_AXIS[site]
    keep = (0, ha, pa) if per_position else (0, ha)
    axes = tuple(i for i in range(prod.ndim) if i not in keep)
    return prod.sum(axis=axes)


def attribution_patching(
    model,
    clean_ids: jax.Array,
    corrupted_ids: jax.Array,
    metric,
    *,
    site: str = "z",
    per_position: bool = False,
    direction: str = "denoise",
    normalize: bool = False,
) -> PatchingResult:
    """Linear estimate of :func:`activation_patching`: ``∂metric/∂x · (x_source - x_base)``
    per head, on the same scale.

    One forward and one backward on the base prompt (corrupted for ``denoise``) plus one
    forward of the source prompt. Returns a :class:`PatchingResult` ``[layer, head]`` (or
    ``[layer, head, pos]``): the estimated ``metric(patched) - metric(corrupted)`` (for
    ``denoise`` the linear term itself; for ``noise`` ``metric(clean) - metric(corrupted)``
    plus it), divided by ``metric(clean) - metric(corrupted)`` with ``normalize``.
    """
    clean_ids, corrupted_ids = _patching_args("attribution_patching", clean_ids, corrupted_ids,
                                              direction, site)
    base_ids, src_ids = ((corrupted_ids, clean_ids) if direction == "denoise"
                         else (clean_ids, corrupted_ids))
    m_base, base, grads = site_gradients(model, base_ids, metric, site=site)
    _, cache = run_with_cache(model, src_ids, names_filter=site)
    m_src = metric_value(model, src_ids, metric)
    est = _attribution(grads, base, cache.stack(site).values, site, per_position)
    head_name = "kv_head" if site in ("k", "v", "rot_k") else "head"
    axes = ("layer", head_name) + (("pos",) if per_position else ())
    if direction == "denoise":
        return PatchingResult.of(est, axes, m_src, m_base, method="attribution",
                                 direction=direction, site=site, normalize=normalize)
    return PatchingResult.of(m_base - m_src + est, axes, m_base, m_src, method="attribution",
                             direction=direction, site=site, normalize=normalize)


def ablation_attribution(model, input_ids: jax.Array, metric, *, site: str = "z",
                         per_position: bool = False) -> Labelled:
    """Linear estimate of zero-ablating each head: ``-∂metric/∂z · z``; the estimated change
    of the metric, ``Labelled [layer, head]`` (or ``[layer, head, pos]``)."""
    _check_site(site)
    _, base, grads = site_gradients(model, input_ids, metric, site=site)
    est = _attribution(grads, base, jnp.zeros((), base.dtype), site, per_position)
    head_name = "kv_head" if site in ("k", "v", "rot_k") else "head"
    return Labelled(est, ("layer", head_name) + (("pos",) if per_position else ()))


# ------------------------------------------------------------------ direct logit attribution


def final_norm_linear(model, components: jax.Array, resid_final: jax.Array) -> jax.Array:
    """The final norm as the linear map it is once its scale is frozen at ``resid_final``.

    ``components [..., batch, d_model]`` (parts of the residual that sum to ``resid_final
    [batch, d_model]``) -> their normalised contributions ``[..., batch, d_model]``; the
    contributions of all parts sum to ``final_norm(resid_final)`` minus its bias.
    """
    norm = model.final_norm
    xf = resid_final.astype(jnp.float32)
    if norm.kind == "rms":
        r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + norm.eps)
        c = components
    else:
        var = jnp.var(xf, axis=-1, keepdims=True)
        r = jax.lax.rsqrt(var + norm.eps)
        c = components - jnp.mean(components, axis=-1, keepdims=True)
    return c * r * norm.scale[...]


def direct_logit_attribution(
    model,
    input_ids: jax.Array,
    tokens: jax.Array,
    wrong_tokens: jax.Array | None = None,
    *,
    position: int = -1,
    layers=None,
) -> Labelled:
    """Direct logit attribution per head: each head's output at ``position``, through the
    final norm (scale frozen at the actual final residual), onto the unembedding of
    ``tokens`` (minus ``wrong_tokens`` when given); averaged over the batch.

    Args:
      input_ids: ``[batch, seq]``.
      tokens, wrong_tokens: ``[batch]`` (or scalar) token ids.

    Returns:
      ``Labelled [layer, head]``.
    """
    ids = jnp.asarray(input_ids)
    cfg = model.config
    layers = resolve_layers(layers, cfg.n_layers)
    _, cache = run_with_cache(model, ids, names_filter=("z", "resid_post"), layers=None)
    final = cache["resid_post", cfg.n_layers - 1][:, position]  # [b, d]
    z = cache.stack("z", layers).values[:, :, position]  # [L, b, h, k]
    head_out = jnp.einsum("lbhk,lhkd->lhbd", z, W_O(model, layers).values)  # [L, h, b, d]
    wu = W_U(model).values
    t = jnp.broadcast_to(jnp.asarray(tokens), (ids.shape[0],))
    direction = wu[:, t].T  # [b, d]
    if wrong_tokens is not None:
        w = jnp.broadcast_to(jnp.asarray(wrong_tokens), (ids.shape[0],))
        direction = direction - wu[:, w].T
    contrib = final_norm_linear(model, head_out, final)
    scores = jnp.einsum("lhbd,bd->lhb", contrib, direction).mean(-1)
    return Labelled(scores, ("layer", "head"), {"layer": layers}, {"layer": cfg.n_layers})

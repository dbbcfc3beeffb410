"""The hook points a forward pass exposes, as a small protocol.

Models call ``hooks.site(name, layer, value)`` at every site and ask
``hooks.wants(name, layer)`` before computing an optional site (``attn_scores``, ``pattern``,
``head_out``).
The base class does nothing, so a forward with :data:`NO_HOOKS` is the plain forward.
``common.interp`` implements interventions and capture on top of this protocol; the model
is never monkey-patched.

Sites are declared once, in :data:`SITE_TABLE` (name, axes of one layer's value, whether it
costs extra); every list of site names, axes, head axes and position axes derives from it.
Axis names: ``batch``, ``pos`` (``query_pos``/``key_pos`` for scores and pattern), ``head``
(query heads), ``kv_head`` (key/value heads), ``d_head``, ``d_model``, ``d_mlp``.

The final norm's site (``ln_final_scale``) belongs to no block: it is reported at layer
``n_layers`` (one past the last block, where TransformerLens' ``ln_final`` sits), and
:attr:`Site.final` marks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax

from common.attention.masks import Mask


@dataclasses.dataclass(frozen=True)
class Site:
    """One hook point of the forward pass.

    Attributes:
      name: the site name, e.g. ``"z"``.
      axes: axis names of one layer's value, e.g. ``("batch", "pos", "head", "d_head")``.
      doc: what the value is.
      optional: computed only when a hook wants it (it costs extra: ``attn_scores`` and
        ``pattern`` force the reference attention path at that layer, ``head_out`` a
        ``[batch, pos, head, d_model]`` product).
      final: after the last block (no layer of its own): its one value is at layer
        ``n_layers``.
    """

    name: str
    axes: tuple[str, ...]
    doc: str
    optional: bool = False
    final: bool = False

    @property
    def head_axis(self) -> int | None:
        """Index of the (query or key/value) head axis in :attr:`axes`, or None."""
        for name in ("head", "kv_head"):
            if name in self.axes:
                return self.axes.index(name)
        return None

    @property
    def pos_axis(self) -> int:
        """Index of the (query) position axis in :attr:`axes`."""
        return self.axes.index("query_pos" if "query_pos" in self.axes else "pos")

    @property
    def kv(self) -> bool:
        """Whether the head axis counts key/value heads (``k``, ``v``, ``rot_k``)."""
        return "kv_head" in self.axes


_RESID = ("batch", "pos", "d_model")
_HEADS = ("batch", "pos", "head", "d_head")
_KV_HEADS = ("batch", "pos", "kv_head", "d_head")

_SCALE = ("batch", "pos")
_SCORES = ("batch", "head", "query_pos", "key_pos")
_NORM_SCALE = ("the norm's per-token divisor, float32: sqrt(mean(x²) + eps) for RMSNorm, "
               "sqrt(var(x) + eps) for LayerNorm (TransformerLens' hook_scale); the norm's output "
               "is (x [- mean]) / scale · w [+ b], so a frozen scale makes the norm linear")

# One line per site, in forward order. Adding a site is one line here (and the model's call).
SITE_TABLE: dict[str, Site] = {s.name: s for s in (
    Site("resid_pre", _RESID, "residual stream entering the block"),
    Site("ln1_scale", _SCALE, "attention norm: " + _NORM_SCALE),
    Site("q", _HEADS, "queries before RoPE"),
    Site("k", _KV_HEADS, "keys before RoPE"),
    Site("v", _KV_HEADS, "values"),
    Site("rot_q", _HEADS, "queries after RoPE"),
    Site("rot_k", _KV_HEADS, "keys after RoPE"),
    Site("attn_scores", _SCORES, "attention logits fed to the softmax, float32: q·k · scale "
         "(soft-capped if the model caps), masked entries float32's lowest value (TL: -inf)",
         optional=True),
    Site("pattern", _SCORES, "attention probabilities", optional=True),
    Site("z", _HEADS, "per-head attention output before W_O"),
    Site("head_out", ("batch", "pos", "head", "d_model"), "per-head output after W_O",
         optional=True),
    Site("attn_out", _RESID, "attention output (sum over heads, with the bias)"),
    Site("resid_mid", _RESID, "residual stream after attention"),
    Site("ln2_scale", _SCALE, "MLP norm: " + _NORM_SCALE),
    Site("mlp_pre", ("batch", "pos", "d_mlp"), "MLP pre-activation: the gate projection "
         "(gated MLPs: act(mlp_pre) · up) or the input projection with its bias (plain MLPs)"),
    Site("mlp_post", ("batch", "pos", "d_mlp"), "MLP hidden activation after the nonlinearity "
         "(and the gating product): the input of the down projection"),
    Site("mlp_out", _RESID, "MLP output"),
    Site("resid_post", _RESID, "residual stream leaving the block"),
    Site("ln_final_scale", _SCALE, "final norm (layer n_layers): " + _NORM_SCALE, final=True),
)}

SITES: tuple[str, ...] = tuple(SITE_TABLE)
"""Every site name, in forward order."""
OPTIONAL_SITES: tuple[str, ...] = tuple(n for n, s in SITE_TABLE.items() if s.optional)
"""Sites computed only when some hook wants them."""
SITE_AXES: dict[str, tuple[str, ...]] = {n: s.axes for n, s in SITE_TABLE.items()}
"""Axis names of one layer's value of each site."""
HEAD_AXIS: dict[str, int] = {n: s.head_axis for n, s in SITE_TABLE.items()
                             if s.head_axis is not None}
"""Axis of the head (or kv-head) index in one layer's value of each per-head site."""
POS_AXIS: dict[str, int] = {n: s.pos_axis for n, s in SITE_TABLE.items()}
"""Axis of the (query) position in one layer's value of each site."""
FINAL_SITES: tuple[str, ...] = tuple(n for n, s in SITE_TABLE.items() if s.final)
"""Sites after the last block, reported at layer ``n_layers``."""


def site_layers(name: str, n_layers: int) -> tuple[int, ...]:
    """The layers a site has values at: ``(n_layers,)`` for a final site, else every block."""
    return (n_layers,) if SITE_TABLE[name].final else tuple(range(n_layers))


def site(name: str) -> Site:
    """The :class:`Site` called ``name``; a KeyError listing the known sites otherwise."""
    try:
        return SITE_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; known sites: {', '.join(SITES)}") from None


class AttentionEdit(NamedTuple):
    """Per-layer changes to how attention is computed (PINE, ACT).

    Attributes:
      mask: replaces the model's mask for this layer, or None.
      q_positions: RoPE positions of queries, ``[batch, seq]`` or ``[batch, heads, seq]``.
      kv_positions: RoPE positions of keys, ``[batch, seq]`` or ``[batch, kv_heads, seq]``.
      prob_transform: ``pattern [batch, heads, q, kv] -> pattern`` (forces the reference path).
      key_positions: ``(q, k) -> KeyPositions`` from the queries ``[batch, q_len, heads,
        head_dim]`` and keys ``[batch, kv_len, kv_heads, head_dim]`` before RoPE (all cached
        keys when decoding): the layer then applies RoPE inside the attention at
        query-dependent key positions (:mod:`common.attention.key_positions`; PINE) and its
        KV cache holds keys before RoPE. Replaces ``q_positions``/``kv_positions``.
    """

    mask: Mask | None = None
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    prob_transform: Callable[[jax.Array], jax.Array] | None = None
    key_positions: Callable[[jax.Array, jax.Array], Any] | None = None


class Hooks:
    """No-op hooks: the plain forward.

    **Scanned layers.** The model's blocks share one parameter stack and the forward scans
    over it (:class:`~common.models.decoder.DecoderLM`). A scan runs one program for many
    layers, so the hooks describe, per layer, the static part of what they do
    (:meth:`layer_program`: which optional sites they want, whether attention is edited, what
    they record); the model scans each run of consecutive layers with equal programs once,
    through the hooks :meth:`for_layers` returns for it. Inside such a run ``layer`` reaches
    :meth:`site` and :meth:`attention_edit` as a traced int32 scalar (index arrays with it;
    decide nothing in Python on it), and the values a hook keeps leave the scan through
    buffers carried by it (:meth:`scan_outputs` per layer, :meth:`scan_keep` which layers,
    :meth:`scan_collect` the result). Hooks that need ``layer`` as a Python int leave :meth:`for_layers`
    at its default (None): the model then runs every layer unrolled with Python ints, as
    before (slower to compile, the same numbers).
    """

    def wants(self, site: str, layer: int) -> bool:  # noqa: ARG002
        """Whether an optional site must be computed at this layer (static)."""
        return False

    def site(self, site: str, layer: int, value: jax.Array) -> jax.Array:  # noqa: ARG002
        """Observe and possibly replace a site's value."""
        return value

    def attention_edit(self, layer: int) -> AttentionEdit | None:  # noqa: ARG002
        """How this layer's attention computation is changed, if at all."""
        return None

    def layer_program(self, layer: int) -> Hashable:  # noqa: ARG002
        """What these hooks do at ``layer`` that changes the traced program (static, hashable);
        consecutive layers with equal values are scanned as one run."""
        return ()

    def for_layers(self, start: int, stop: int) -> Hooks | None:  # noqa: ARG002
        """Hooks for the run of layers ``start .. stop-1`` (all with one
        :meth:`layer_program`), whose ``layer`` may be traced; None: run them unrolled with
        these hooks. The no-op base class serves itself; subclasses opt in."""
        return self if type(self) is Hooks else None

    def scan_outputs(self) -> Any:
        """The values kept by :meth:`site` during one layer of a run (a pytree of arrays,
        taken and cleared)."""
        return {}

    def scan_keep(self, layers: tuple[int, ...], outputs: Any) -> Any:  # noqa: ARG002
        """For each leaf of :meth:`scan_outputs` (``outputs``: their structure), the layers of
        the run ``layers`` whose value is kept (a tuple); the model keeps only those, so a
        capture at a few layers of a long run holds a few values, not one per layer."""
        return jax.tree.map(lambda _: (), outputs)

    def scan_collect(self, layers: tuple[int, ...], outputs: Any) -> None:
        """Receive the kept values of the run ``layers``: each leaf of :meth:`scan_outputs`
        stacked over its :meth:`scan_keep` layers (leading axis)."""


NO_HOOKS = Hooks()


def resolve_hooks(intervention: Any, config: Any) -> Hooks:
    """``None`` -> no hooks; a :class:`Hooks` as is; else ``intervention.hooks(config)``.

    ``intervention`` is typically a ``common.interp.Intervention``; ``config`` the model's
    ``ModelConfig``.
    """
    if intervention is None:
        return NO_HOOKS
    if isinstance(intervention, Hooks):
        return intervention
    if hasattr(intervention, "hooks"):
        return intervention.hooks(config)
    raise TypeError(f"intervention: expected None, a Hooks or an Intervention, got {type(intervention)}")

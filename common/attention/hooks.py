"""The hook points a forward pass exposes, as a small protocol.

Models call ``hooks.site(name, layer, value)`` at every site and ask
``hooks.wants(name, layer)`` before computing an optional site (``pattern``, ``head_out``).
The base class does nothing, so a forward with :data:`NO_HOOKS` is the plain forward.
``common.interp`` implements interventions and capture on top of this protocol; the model
is never monkey-patched.

Sites (shapes for a decoder with ``heads`` query heads, ``kv_heads`` key/value heads):

===============  ===========================================
``resid_pre``    ``[batch, seq, d_model]``
``q``            ``[batch, seq, heads, head_dim]`` before RoPE
``k`` / ``v``    ``[batch, seq, kv_heads, head_dim]`` (``k`` before RoPE)
``rot_q``        ``[batch, seq, heads, head_dim]`` after RoPE
``rot_k``        ``[batch, seq, kv_heads, head_dim]`` after RoPE
``pattern``      ``[batch, heads, q_len, kv_len]`` (only when wanted)
``z``            ``[batch, seq, heads, head_dim]`` per-head output before ``W_O``
``head_out``     ``[batch, seq, heads, d_model]`` (only when wanted)
``attn_out``     ``[batch, seq, d_model]``
``resid_mid``    ``[batch, seq, d_model]``
``mlp_out``      ``[batch, seq, d_model]``
``resid_post``   ``[batch, seq, d_model]``
===============  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from common.attention.masks import Mask

SITES = (
    "resid_pre",
    "q",
    "k",
    "v",
    "rot_q",
    "rot_k",
    "pattern",
    "z",
    "head_out",
    "attn_out",
    "resid_mid",
    "mlp_out",
    "resid_post",
)

# Sites that are only computed when some hook wants them.
OPTIONAL_SITES = ("pattern", "head_out")


class AttentionEdit(NamedTuple):
    """Per-layer changes to how attention is computed (PINE, ACT).

    Attributes:
      mask: replaces the model's mask for this layer, or None.
      q_positions: RoPE positions of queries, ``[batch, seq]`` or ``[batch, heads, seq]``.
      kv_positions: RoPE positions of keys, ``[batch, seq]`` or ``[batch, kv_heads, seq]``.
      prob_transform: ``pattern [batch, heads, q, kv] -> pattern`` (forces the reference path).
    """

    mask: Mask | None = None
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    prob_transform: Callable[[jax.Array], jax.Array] | None = None


class Hooks:
    """No-op hooks: the plain forward."""

    def wants(self, site: str, layer: int) -> bool:  # noqa: ARG002
        """Whether an optional site must be computed at this layer (static)."""
        return False

    def site(self, site: str, layer: int, value: jax.Array) -> jax.Array:  # noqa: ARG002
        """Observe and possibly replace a site's value."""
        return value

    def attention_edit(self, layer: int) -> AttentionEdit | None:  # noqa: ARG002
        """How this layer's attention computation is changed, if at all."""
        return None


NO_HOOKS = Hooks()

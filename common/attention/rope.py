"""Rotary position embeddings (rotate-half convention, as in Hugging Face Llama / GPT-NeoX).

Positions may be shared by all heads (``[batch, seq]``) or given per head
(``[batch, heads, seq]``): PINE assigns each head its own importance-ordered positions.
Partial rotary (GPT-NeoX/Pythia ``rotary_pct``) rotates only the first ``rotary_dim`` features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from common.attention.precision import accum_dtype


@dataclasses.dataclass(frozen=True)
class RoPE:
    """Rotary embedding settings.

    Attributes:
      head_dim: features per head.
      theta: base of the inverse frequencies.
      rotary_dim: number of leading features rotated (``head_dim`` for full rotary).
      scaling: optional Llama-3 style frequency scaling, a dict with ``factor``,
        ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``.
    """

    head_dim: int
    theta: float = 10000.0
    rotary_dim: int | None = None
    scaling: tuple | None = None  # tuple(sorted(dict.items())) so the dataclass stays hashable

    @property
    def dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    def inv_freq(self, dtype=jnp.float32) -> jax.Array:
        """``[dim // 2]`` inverse frequencies in ``dtype`` (float32 unless a float64 model
        asks for float64)."""
        dim = self.dim
        inv = 1.0 / (self.theta ** (jnp.arange(0, dim, 2, dtype=dtype) / dim))
        if self.scaling is not None:
            inv = _llama3_scale(inv, dict(self.scaling))
        return inv

    def apply(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Rotate ``x [batch, seq, heads, head_dim]`` by ``positions``.

        ``positions`` is ``[batch, seq]`` (all heads) or ``[batch, heads, seq]`` (per head).
        """
        b, s, h, _ = x.shape
        if positions.ndim == 2:
            pos = positions[:, :, None]  # [b, s, 1]
        elif positions.ndim == 3:
            if positions.shape[1] not in (1, h):
                raise ValueError(
                    f"per-head positions must be [batch, {h}, seq], got {positions.shape}"
                )
            pos = jnp.swapaxes(positions, 1, 2)  # [b, s, h]
        else:
            raise ValueError(f"positions must be [batch, seq] or [batch, heads, seq], got {positions.shape}")
        return self.rotate_at(x, pos)  # pos [b, s, h|1] against x [b, s, h, head_dim]

    def rotate_at(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Rotate each vector of ``x [..., head_dim]`` by its own position.

        ``positions`` broadcasts against ``x.shape[:-1]`` (any leading shape): the general form
        of :meth:`apply`, for keys whose position depends on the query
        (:mod:`common.attention.key_positions`). Computed in
        :func:`~common.attention.precision.accum_dtype` of ``x`` (float32 for bf16/f32,
        float64 for a float64 model) and returned in ``x.dtype``.
        """
        acc = accum_dtype(x.dtype)
        angles = jnp.asarray(positions).astype(acc)[..., None] * self.inv_freq(acc)
        return self.rotate_by(x, jnp.cos(angles), jnp.sin(angles))

    def rotate_by(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """Rotate ``x [..., head_dim]`` (its first ``dim`` features, half-split pairs) by the
        angles whose ``cos``/``sin [..., dim // 2]`` are given (broadcasting against
        ``x.shape[:-1]``), computed in their dtype and returned in ``x.dtype``; the features
        past ``dim`` (partial rotary) pass through."""
        cos = jnp.concatenate([cos, cos], axis=-1)
        sin = jnp.concatenate([sin, sin], axis=-1)
        dim, half = self.dim, self.dim // 2
        rot, keep = x[..., :dim], x[..., dim:]
        xf = rot.astype(cos.dtype)
        rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
        out = (xf * cos + rotated * sin).astype(x.dtype)
        if keep.shape[-1]:
            out = jnp.concatenate([out, jnp.broadcast_to(keep, out.shape[:-1] + keep.shape[-1:])],
                                  axis=-1)
        return out


def _llama3_scale(inv_freq: jax.Array, cfg: dict) -> jax.Array:
    """Llama 3.1 frequency-dependent scaling of the inverse frequencies."""
    factor = cfg["factor"]
    low = cfg.get("low_freq_factor", 1.0)
    high = cfg.get("high_freq_factor", 4.0)
    old = cfg.get("original_max_position_embeddings", 8192)
    wavelen = 2 * jnp.pi / inv_freq
    low_wl = old / low
    high_wl = old / high
    smooth = (old / wavelen - low) / (high - low)
    scaled = jnp.where(wavelen > low_wl, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= low_wl) & (wavelen >= high_wl)
    return jnp.where(is_mid, mid, scaled)

"""Multi-head attention with the head axis explicit in every parameter (Flax NNX).

Parameter layout (logical axis names in the ``out_sharding`` metadata):

* ``q_kernel``  ``[d_model, heads, head_dim]``      (``embed, heads, head_dim``)
* ``k_kernel``  ``[d_model, kv_heads, head_dim]``   (``embed, kv_heads, head_dim``)
* ``v_kernel``  ``[d_model, kv_heads, head_dim]``
* ``o_kernel``  ``[heads, head_dim, d_model]``      (``heads, head_dim, embed``)
* optional biases ``q_bias [heads, head_dim]``, ``k_bias``/``v_bias [kv_heads, head_dim]``,
  ``o_bias [d_model]``.

Grouped-query attention: query head ``h`` reads key/value head ``h // (heads // kv_heads)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from common.attention.core import dot_product_attention, head_scale
from common.attention.hooks import NO_HOOKS, AttentionEdit, Hooks
from common.attention.key_positions import rope_attention
from common.attention.masks import Mask
from common.attention.precision import accum_dtype, lowest
from common.attention.projection import merge_heads, project_heads
from common.attention.rope import RoPE


def param(rngs: nnx.Rngs, shape, axes, dtype, init=None, scale: float | None = None) -> nnx.Param:
    """A parameter with logical axis names (``out_sharding``) and no eager sharding."""
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        std = 0.02 if scale is None else scale
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class LayerKV(NamedTuple):
    """One layer's KV cache: ``k, v [batch, max_len, kv_heads, head_dim]`` (k after RoPE)."""

    k: jax.Array
    v: jax.Array


class MultiHeadAttention(nnx.Module):
    """Per-head attention layer. See the module docstring for the parameter layout."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = False,
        o_bias: bool = False,
        rope: RoPE | None = None,
        scale: float | None = None,
        softcap: float | None = None,
        backend: str = "auto",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        init_std: float = 0.02,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = (
            d_model, num_heads, num_kv_heads, head_dim)
        self.rope = rope
        self.scale = scale
        self.softcap = softcap
        self.backend = backend
        self.dtype = dtype
        p = lambda shape, axes, init=None: param(rngs, shape, axes, param_dtype, init, init_std)
        self.q_kernel = p((d_model, num_heads, head_dim), ("embed", "heads", "head_dim"))
        self.k_kernel = p((d_model, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
        self.v_kernel = p((d_model, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
        self.o_kernel = p((num_heads, head_dim, d_model), ("heads", "head_dim", "embed"))
        if qkv_bias:
            self.q_bias = p((num_heads, head_dim), ("heads", "head_dim"), "zeros")
            self.k_bias = p((num_kv_heads, head_dim), ("kv_heads", "head_dim"), "zeros")
            self.v_bias = p((num_kv_heads, head_dim), ("kv_heads", "head_dim"), "zeros")
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = p((d_model,), ("embed",), "zeros") if o_bias else None

    def _proj(self, x, kernel, bias):
        y = project_heads(x, kernel[...].astype(self.dtype))
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return y

    def _scored_attention(self, q, k, v, mask: Mask | None, transform, hooks: Hooks,
                          layer: int) -> jax.Array:
        """The ``reference`` backend's einsum attention with the ``attn_scores`` site between
        the masked logits and the softmax (the layers that capture or edit the scores only).

        Scores ``[batch, heads, q_len, kv_len]`` float32 (float64 for a float64 model; query
        head ``h`` is kv head ``h // group``, member ``h % group``, as in the backends), masked
        entries at that dtype's lowest value; ``transform`` (probability transform, ``pattern`` site) as in
        :func:`~common.attention.core.dot_product_attention`.
        """
        b, sq, h, d = q.shape
        skv, kvh = k.shape[1], k.shape[2]
        g = h // kvh
        full = (b, kvh, g, sq, skv)
        acc = accum_dtype(q.dtype)
        s = head_scale(self.scale, h, d, acc)
        logits = jnp.einsum("bqkgd,bskd->bkgqs", q.reshape(b, sq, kvh, g, d), k,
                            preferred_element_type=acc) * s.reshape(1, kvh, g, 1, 1)
        if self.softcap is not None:
            logits = self.softcap * jnp.tanh(logits / self.softcap)
        if mask is not None:
            m = mask.materialize(b, sq, skv)
            if m is not None:
                m = m.reshape(b, -1, 1, sq, skv) if m.shape[1] == 1 else m.reshape(full)
                logits = jnp.where(m, logits, lowest(acc))
        scores = hooks.site("attn_scores", layer, logits.reshape(b, h, sq, skv))
        pattern = jax.nn.softmax(scores, axis=-1)
        if transform is not None:
            pattern = transform(pattern)
        out = jnp.einsum("bkgqs,bskd->bqkgd", pattern.reshape(full).astype(v.dtype), v,
                         preferred_element_type=acc)
        return out.reshape(b, sq, h, d).astype(q.dtype)

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        mask: Mask | None,
        cache: LayerKV | None = None,
        cache_index: jax.Array | None = None,
        hooks: Hooks = NO_HOOKS,
        layer: int = 0,
        kv_x: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerKV | None]:
        """Attend.

        Args:
          x: ``[batch, seq, d_model]``.
          kv_x: optional ``[batch, kv_seq, d_model]``: keys and values come from this sequence
            (cross-attention, e.g. an encoder-decoder's decoder attending to the encoder output);
            None (default) is self-attention on ``x``. Not with RoPE or a KV cache (ValueError).
          positions: RoPE positions ``[batch, seq]`` of the new tokens.
          mask: attention mask over ``[seq, kv_len]`` (``kv_len`` = cache length if cached).
          cache: this layer's KV cache; new keys/values are written at ``cache_index``.
          hooks: observation/intervention hooks (see ``common.attention.hooks``).
          layer: this layer's index, passed to the hooks.

        Returns:
          ``(attn_out [batch, seq, d_model], updated cache or None)``.
        """
        x = x.astype(self.dtype)
        q = hooks.site("q", layer, self._proj(x, self.q_kernel, self.q_bias))
        if kv_x is not None and (self.rope is not None or cache is not None):
            raise ValueError("MultiHeadAttention: kv_x (cross-attention) takes no RoPE and no cache")
        src = x if kv_x is None else kv_x.astype(self.dtype)
        k = hooks.site("k", layer, self._proj(src, self.k_kernel, self.k_bias))
        v = hooks.site("v", layer, self._proj(src, self.v_kernel, self.v_bias))
        edit = hooks.attention_edit(layer)
        if edit is not None and edit.key_positions is not None:
            return self._keyed_attention(q, k, v, edit, mask, cache, cache_index, hooks, layer)
        q_pos = positions if edit is None or edit.q_positions is None else edit.q_positions
        k_pos = positions if edit is None or edit.kv_positions is None else edit.kv_positions
        if edit is not None and edit.mask is not None:
            mask = edit.mask
        if self.rope is not None:
            q = self.rope.apply(q, q_pos)
            k = self.rope.apply(k, k_pos)
        q = hooks.site("rot_q", layer, q)
        k = hooks.site("rot_k", layer, k)
        if cache is not None:
            cache, k, v = self._write_cache(cache, cache_index, k, v)
        transform = self._pattern_site(None if edit is None else edit.prob_transform, hooks,
                                       layer)

        if hooks.wants("attn_scores", layer):
            out = self._scored_attention(q, k, v, mask, transform, hooks, layer)
        else:
            out = dot_product_attention(
                q, k, v, mask=mask, scale=self.scale, softcap=self.softcap,
                backend=self.backend, prob_transform=transform,
            ).out
        return self._output(out, hooks, layer), cache

    def _keyed_attention(self, q, k, v, edit: AttentionEdit, mask: Mask | None,
                         cache: LayerKV | None, cache_index, hooks: Hooks, layer):
        """Attention at query-dependent key positions (``edit.key_positions``; PINE).

        ``q``, ``k`` are before RoPE; the cache stores keys before RoPE (re-rotated at every
        step). The model's ``positions`` are not used: the edit's positions say it all. The
        ``rot_q``/``rot_k``
        sites do not exist on this path (no one rotation per key); ``attn_scores`` is not
        supported on it.
        """
        if self.rope is None:
            raise ValueError("MultiHeadAttention: key_positions need a RoPE model (this layer "
                             "has no rotary embedding)")
        if hooks.wants("attn_scores", layer):
            raise ValueError("MultiHeadAttention: the attn_scores site is not available with "
                             "key_positions (capture 'pattern' instead)")
        if edit.mask is not None:
            mask = edit.mask
        if cache is not None:
            cache, k, v = self._write_cache(cache, cache_index, k, v)
        kp = edit.key_positions(q, k)
        transform = self._pattern_site(edit.prob_transform, hooks, layer)

        out = rope_attention(q, k, v, kp, self.rope, mask=mask, scale=self.scale,
                             softcap=self.softcap, prob_transform=transform).out
        return self._output(out, hooks, layer), cache

    def _write_cache(self, cache: LayerKV, cache_index, k: jax.Array, v: jax.Array):
        """Write ``k``, ``v [batch, seq, kv_heads, head_dim]`` at ``cache_index``; returns the
        new cache and its whole keys and values in the compute dtype."""
        idx = jnp.asarray(cache_index, jnp.int32)
        at = (jnp.int32(0), idx, jnp.int32(0), jnp.int32(0))  # one index type under 64-bit JAX
        ck = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), at)
        cv = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), at)
        return LayerKV(ck, cv), ck.astype(self.dtype), cv.astype(self.dtype)

    @staticmethod
    def _pattern_site(transform, hooks: Hooks, layer):
        """The probability transform with the ``pattern`` site after it, when it is wanted."""
        if not hooks.wants("pattern", layer):
            return transform

        def with_site(p):
            p = p if transform is None else transform(p)
            return hooks.site("pattern", layer, p)

        return with_site

    def _output(self, out: jax.Array, hooks: Hooks, layer) -> jax.Array:
        """``z [batch, seq, heads, head_dim]`` -> ``attn_out [batch, seq, d_model]`` (the
        ``z`` and ``head_out`` sites, ``W_O`` and its bias)."""
        z = hooks.site("z", layer, out)
        wo = self.o_kernel[...].astype(self.dtype)
        if hooks.wants("head_out", layer):
            head_out = hooks.site("head_out", layer, jnp.einsum("bshk,hkd->bshd", z, wo))
            out = head_out.sum(axis=2)
        else:
            out = merge_heads(z, wo)
        if self.o_bias is not None:
            out = out + self.o_bias[...].astype(self.dtype)
        return out

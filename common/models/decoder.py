"""Decoder-only LMs on the per-head attention core (Flax NNX).

One :class:`DecoderLM` covers the Llama family (RMSNorm, SwiGLU, RoPE, GQA, tied or untied
embeddings; SmolLM2 is one), GPT-2 (learned positions, LayerNorm, GELU, biases) and
GPT-NeoX/Pythia (parallel residual, partial rotary); :class:`~common.models.config.ModelConfig`
selects the pieces. Every site of ``common.attention.hooks.SITES`` is exposed to hooks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from common.attention.hooks import NO_HOOKS, Hooks
from common.attention.layer import LayerKV, MultiHeadAttention, param
from common.attention.masks import Mask
from common.attention.precision import accum_dtype
from common.attention.rope import RoPE
from common.models import layer_stack, views
from common.models.activation_sharding import constrain
from common.models.capture import call as capture_call
from common.models.capture import run_with_cache
from common.models.config import ModelConfig
from common.models.layers import MLP, Embed, Norm

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def param_dtype(config: ModelConfig):
    """Parameter dtype of a model: float64 for a float64 model (weights as precise as the
    computation), float32 otherwise (bf16 models cast their float32 weights per use)."""
    return jnp.float64 if config.dtype == "float64" else jnp.float32


class KVCache(NamedTuple):
    """The KV cache of every layer, stacked: ``layers.k``/``layers.v [n_layers, batch,
    max_len, kv_heads, head_dim]`` (keys after RoPE), or one :class:`LayerKV` per layer
    (``per_layer=True``: the decode loop's layout, beside the weights sliced per layer), the
    number of filled slots ``length`` (int32 scalar) and ``valid [batch, max_len]`` (False for
    padding slots)."""

    layers: LayerKV | tuple[LayerKV, ...]
    length: jax.Array
    valid: jax.Array

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None, *,
               per_layer: bool = False) -> KVCache:
    """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens (stacked, or one
    buffer per layer with ``per_layer``)."""
    dtype = dtype or _DTYPES[config.dtype]
    shape = (batch, max_len, config.n_kv_heads, config.d_head)
    if per_layer:
        layers = tuple(LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                       for _ in range(config.n_layers))
    else:
        stacked = (config.n_layers,) + shape
        layers = LayerKV(jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype))
    return KVCache(layers, jnp.zeros((), jnp.int32), jnp.zeros((batch, max_len), bool))


class Block(nnx.Module):
    """One transformer block: attention and MLP, sequential or parallel residual."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, pdt = _DTYPES[cfg.dtype], param_dtype(cfg)
        self.parallel = cfg.parallel_residual
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, rngs=rngs, param_dtype=pdt)
        rope = None
        if cfg.pos == "rope":
            rope = RoPE(cfg.d_head, cfg.rope_theta, cfg.rotary_dim, cfg.rope_scaling)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, rngs=rngs,
            qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, rope=rope, backend=cfg.attn_backend,
            dtype=dtype, param_dtype=pdt,
        )
        self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, rngs=rngs, param_dtype=pdt)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, act=cfg.act, gated=cfg.gated_mlp,
                       bias=cfg.mlp_bias, rngs=rngs, dtype=dtype, param_dtype=pdt)

    def __call__(self, x, *, positions, mask, cache, cache_index, hooks: Hooks, layer: int):
        """``x [batch, seq, d_model]`` -> ``(x, cache)``."""
        x = hooks.site("resid_pre", layer, x)
        attn_out, cache = self.attn(self.attn_norm(x, hooks, "ln1_scale", layer), positions=positions,
                                    mask=mask, cache=cache, cache_index=cache_index, hooks=hooks,
                                    layer=layer)
        attn_out = hooks.site("attn_out", layer, attn_out)

        def mlp(y):
            return hooks.site("mlp_out", layer,
                              self.mlp(self.mlp_norm(y, hooks, "ln2_scale", layer), hooks, layer))

        if self.parallel:
            x = x + attn_out + mlp(x)
        else:
            x = hooks.site("resid_mid", layer, x + attn_out)
            x = x + mlp(x)
        return hooks.site("resid_post", layer, x), cache


class DecoderLM(nnx.Module):
    """Decoder-only LM. ``model(input_ids [batch, seq]) -> logits [batch, seq, vocab]`` (f32).

    Parameters: ``embed.embedding [vocab, d_model]``, ``pos_embed.embedding [max_pos, d_model]``
    (GPT-2), ``blocks`` (one :class:`Block` whose parameters carry a leading ``layers`` axis:
    ``blocks.attn.q_kernel [n_layers, d_model, heads, d_head]``, ``blocks.attn_norm``,
    ``blocks.mlp_norm``, ``blocks.mlp``; see :mod:`common.models.layer_stack`), ``final_norm``,
    ``lm_head [d_model, vocab]`` (untied models only). ``model.block(i)`` is layer ``i`` as a
    plain :class:`Block` (a copy); ``model.set_block(i, block)`` writes one back.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config.check_dtype_enabled()
        self.config = config
        pdt = param_dtype(config)
        self.embed = Embed(config.vocab_size, config.d_model, ("vocab", "embed"), rngs=rngs,
                           param_dtype=pdt)
        self.pos_embed = (
            Embed(config.max_position, config.d_model, (None, "embed"), rngs=rngs,
                  param_dtype=pdt)
            if config.pos == "learned" else None
        )
        self.blocks = layer_stack.stacked(lambda r: Block(config, rngs=r), config.n_layers, rngs)
        self.final_norm = Norm(config.d_model, config.norm, config.norm_eps, rngs=rngs)
        self.lm_head = (
            None if config.tie_embeddings
            else param(rngs, (config.d_model, config.vocab_size), ("embed", "vocab"), pdt)
        )

    @property
    def dtype(self):
        return _DTYPES[self.config.dtype]

    def embed_tokens(self, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
        """``[batch, seq] -> [batch, seq, d_model]`` (token plus learned position embedding)."""
        x = self.embed(input_ids, self.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions, self.dtype)
        return x

    def unembed(self, x: jax.Array, hooks: Hooks = NO_HOOKS) -> jax.Array:
        """Final norm and unembedding: ``[..., d_model] -> [..., vocab]`` float32 logits
        (float64 for a float64 model); the
        final norm's divisor is the site ``ln_final_scale`` at layer ``n_layers``."""
        x = self.final_norm(x, hooks, "ln_final_scale", self.config.n_layers)
        if self.lm_head is None:
            logits = self.embed.attend(x)
        else:
            logits = jnp.einsum("...d,dv->...v", x, self.lm_head[...].astype(x.dtype),
                                preferred_element_type=accum_dtype(x.dtype))
        if logits.ndim == 3:
            logits = constrain(logits, ("batch", "seq", "vocab"))
        return logits

    def block(self, layer: int) -> Block:
        """Layer ``layer`` (negative counts from the end) as a plain :class:`Block` holding a
        copy of that layer's parameters (editing it leaves the model unchanged; edit the stack,
        e.g. ``model.blocks.mlp.down_kernel[...] = w.at[layer].set(...)``)."""
        n = self.config.n_layers
        if not -n <= layer < n:
            raise IndexError(f"block: layer {layer} out of range [0, {n})")
        graphdef, params = nnx.split(self.blocks)
        return nnx.merge(graphdef, layer_stack.layer_params(params, layer % n))

    def set_block(self, layer: int, block: Block) -> None:
        """Write ``block``'s parameters (a :meth:`block` copy, edited) into the stack at
        ``layer``: a weight edit of one layer."""
        n = self.config.n_layers
        if not -n <= layer < n:
            raise IndexError(f"set_block: layer {layer} out of range [0, {n})")
        params = nnx.state(self.blocks)
        new = jax.tree.map(lambda a, b: a.at[layer % n].set(b.astype(a.dtype)), params,
                           nnx.state(block))
        nnx.update(self.blocks, new)

    def run_blocks(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        mask: Mask | None,
        hooks: Hooks = NO_HOOKS,
        start: int = 0,
        stop: int | None = None,
        per_layer: tuple | None = None,
    ) -> jax.Array:
        """Run blocks ``start .. stop-1`` on the residual stream ``x [batch, seq, d_model]``
        (scanned over the stack unless ``config.scan_layers`` is False).

        Lets a sweep reuse the unchanged layers below the one it edits. ``per_layer``: every
        layer's parameters sliced once (``layer_stack.unstack(model.blocks)``), run unrolled
        on their own arrays: for gradients through a frozen model, where the scanned stack's
        weight slices are copies on XLA:CPU in the forward and again in the backward.
        """
        stop = self.config.n_layers if stop is None else stop
        x, _ = layer_stack.run_layers(self.blocks, x, positions=positions, mask=mask, hooks=hooks,
                                      start=start, stop=stop, scan=self.config.scan_layers,
                                      remat=self.config.remat, per_layer=per_layer)
        return x

    def resid_pre(self, input_ids: jax.Array, layer: int, *, positions: jax.Array | None = None,
                  mask: Mask | None = None, hooks: Hooks = NO_HOOKS) -> jax.Array:
        """The residual stream entering layer ``layer`` (0 .. n_layers): ``[batch, seq,
        d_model]``, computed by layers ``0 .. layer-1`` only (no KV cache).

        With :meth:`forward_from` it splits the forward at a layer: a search that edits only
        layers ``>= layer`` runs the prefix once per input (ACT's head search).
        """
        if not 0 <= layer <= self.config.n_layers:
            raise ValueError(f"resid_pre: layer {layer} out of range [0, {self.config.n_layers}]")
        positions, mask = self._positions_mask(input_ids, positions, mask)
        x = self.embed_tokens(input_ids, positions)
        return self.run_blocks(x, positions=positions, mask=mask, hooks=hooks, stop=layer)

    def forward_from(self, x: jax.Array, start: int, *, positions: jax.Array | None = None,
                     mask: Mask | None = None, hooks: Hooks = NO_HOOKS,
                     last_only: bool = False) -> jax.Array:
        """Logits ``[batch, seq|1, vocab]`` (float32) from the residual ``x [batch, seq,
        d_model]`` entering layer ``start``: layers ``start .. n_layers-1``, final norm,
        unembedding. ``forward_from(resid_pre(ids, l), l)`` is the full forward (no KV cache;
        ``hooks`` apply at the layers run).
        """
        if not 0 <= start <= self.config.n_layers:
            raise ValueError(f"forward_from: start {start} out of range "
                             f"[0, {self.config.n_layers}]")
        b, s = x.shape[:2]
        positions, mask = self._positions_mask(jnp.zeros((b, s), jnp.int32), positions, mask)
        x = self.run_blocks(x, positions=positions, mask=mask, hooks=hooks, start=start)
        if last_only:
            x = x[:, -1:]
        return self.unembed(x, hooks)

    def _positions_mask(self, input_ids, positions, mask):
        """Default ``positions`` (``arange``) and ``mask`` (causal) of a cache-free forward."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        b, s = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        return positions, Mask(causal=True) if mask is None else mask

    def forward(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        mask: Mask | None = None,
        hooks: Hooks = NO_HOOKS,
        cache: KVCache | None = None,
        token_valid: jax.Array | None = None,
        last_only: bool = False,
        per_layer: tuple | None = None,
        logits: bool = True,
    ) -> tuple[jax.Array | None, KVCache | None]:
        """The full forward with hooks and an optional KV cache.

        Args:
          input_ids: ``[batch, seq]`` int token ids.
          positions: ``[batch, seq]`` position ids; default ``arange`` (after the cache length).
          mask: attention mask; default causal (over cache slots when cached).
          hooks: site hooks (interventions, capture).
          cache: KV cache; the new tokens are written at ``cache.length``.
          token_valid: ``[batch, seq]`` bool, False at padding tokens (cached runs only).
          last_only: compute logits for the last position only (``[batch, 1, vocab]``).
          per_layer: the layers' parameters sliced once (``layer_stack.unstack(model.blocks)``),
            run unrolled (a decode loop: no slicing of the stack at every token).
          logits: False skips the final norm and the unembedding (a prefill that only fills
            the cache); the logits returned are then None.

        Returns:
          ``(logits [batch, seq|1, vocab] float32 or None, updated cache or None)``.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        b, s = input_ids.shape
        start = 0 if cache is None else cache.length
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(s, dtype=jnp.int32), (b, s))
        if self.pos_embed is not None and cache is None and s > self.config.max_position:
            raise ValueError(f"sequence length {s} exceeds max_position {self.config.max_position}")
        cache_index = None
        if cache is not None:
            cache_index = cache.length
            tv = jnp.ones((b, s), bool) if token_valid is None else token_valid.astype(bool)
            # indices of one integer type (a literal 0 would be int64 under 64-bit JAX)
            zero = jnp.zeros_like(cache.length)
            valid = jax.lax.dynamic_update_slice(cache.valid, tv, (zero, cache.length))
            if mask is None:
                slots = cache.length + jnp.arange(s, dtype=jnp.int32)
                mask = Mask(
                    causal=True,
                    q_positions=jnp.broadcast_to(slots, (b, s)),
                    kv_positions=jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32),
                                                  (b, cache.max_len)),
                    kv_valid=valid,
                )
        elif mask is None:
            mask = Mask(causal=True)
        x = self.embed_tokens(input_ids, positions)
        x, layers_kv = layer_stack.run_layers(
            self.blocks, x, positions=positions, mask=mask, hooks=hooks, start=0,
            stop=self.config.n_layers, scan=self.config.scan_layers, remat=self.config.remat,
            cache=None if cache is None else cache.layers, cache_index=cache_index,
            per_layer=per_layer)
        if cache is not None:
            cache = KVCache(layers_kv, cache.length + s, valid)
        if not logits:
            return None, cache
        if last_only:
            x = x[:, -1:]
        return self.unembed(x, hooks), cache

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        mask: Mask | None = None,
        intervention: Any = None,
    ) -> jax.Array:
        """``input_ids [batch, seq] -> logits [batch, seq, vocab]`` (float32).

        ``intervention``: None, a :class:`~common.attention.hooks.Hooks`, or an object with
        ``.hooks(config)`` (``common.interp.Intervention``).

        Called from plain Python this is the jitted forward (``common.models.capture.forward``:
        the first call per shape and intervention structure compiles, later ones reuse it);
        inside ``jax.jit``/``grad``/``nnx.jit`` of the caller's it runs inline in that trace
        (see :func:`common.models.capture.call`).
        """
        return capture_call(self, input_ids, positions=positions, mask=mask,
                            intervention=intervention)

    def run_with_cache(self, input_ids: jax.Array, **kw):
        """``(logits, cache)`` with the requested sites; see :func:`common.models.capture.run_with_cache`."""
        return run_with_cache(self, input_ids, **kw)

    # ---- TransformerLens vocabulary: weight views of every layer (common.models.views) -------
    # Each is computed from the parameters on access (pure, nothing cached) and is a
    # ``Labelled``; ``views.OV(model, layers=[...])`` computes only some layers.

    @property
    def cfg(self) -> views.LensConfig:
        """The sizes under TransformerLens' names (``n_layers, n_heads, d_model, d_head,
        d_vocab, ...``); the model's own configuration is ``model.config``."""
        return views.lens_config(self.config)

    @property
    def W_Q(self):  # noqa: N802 - TransformerLens' name
        """``[layer, head, d_model, d_head]``."""
        return views.W_Q(self)

    @property
    def W_K(self):  # noqa: N802
        """``[layer, head, d_model, d_head]`` (grouped-query heads expanded to query heads)."""
        return views.W_K(self)

    @property
    def W_V(self):  # noqa: N802
        """``[layer, head, d_model, d_head]`` (grouped-query heads expanded to query heads)."""
        return views.W_V(self)

    @property
    def W_O(self):  # noqa: N802
        """``[layer, head, d_head, d_model]``."""
        return views.W_O(self)

    @property
    def b_O(self):  # noqa: N802
        """``[layer, d_model]`` (zeros where the model has no output bias)."""
        return views.b_O(self)

    @property
    def W_E(self):  # noqa: N802
        """``[vocab, d_model]``."""
        return views.W_E(self)

    @property
    def W_U(self):  # noqa: N802
        """``[d_model, vocab]``."""
        return views.W_U(self)

    @property
    def OV(self):  # noqa: N802
        """``[layer, head, d_model_in, d_model_out]`` (all layers: SmolLM2 360 MB; for a few
        layers use ``common.interp.OV(model, layers=[...])``)."""
        return views.OV(self)

    @property
    def QK(self):  # noqa: N802
        """``[layer, head, d_model_query, d_model_key]`` (RoPE not included)."""
        return views.QK(self)

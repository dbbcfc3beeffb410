"""Head views: TransformerLens-order weight views as pure functions of a model.

The model stores ``q_kernel [d_model, heads, d_head]``, ``k/v_kernel [d_model, kv_heads,
d_head]`` and ``o_kernel [heads, d_head, d_model]``; these functions return
:class:`~common.labelled.Labelled` stacks over layers in the order researchers know:

* ``W_Q, W_K, W_V``: ``[layer, head, d_model, d_head]``; for grouped-query attention
  ``W_K``/``W_V`` are expanded so that query head ``h`` sees its key/value head
  ``h // group`` (``expand=False`` gives the ``kv_head`` axis instead);
* ``W_O``: ``[layer, head, d_head, d_model]``;
* ``OV = W_V @ W_O`` and ``QK = W_Q @ W_Kᵀ``: ``[layer, head, d_model, d_model]`` (RoPE is
  position dependent and not part of ``QK``);
* ``W_E [vocab, d_model]``, ``W_U [d_model, vocab]`` and the effective embedding.

Every view is a :class:`Labelled` (one return type), pure (reads the parameters, changes
nothing) and works under ``jax.jit``. ``layers`` takes negative indices (``-1``: the last
layer); the ``layer`` axis records the model's layer count, so ``W_Q(model, layers=[23])[-1]``
asks for the model's last layer. ``DecoderLM`` exposes them as attributes (``model.W_Q``,
``model.OV``, ...; all layers) and :func:`lens_config` as ``model.cfg``.

They live with the models (not in ``common.interp``, which re-exports them) so that the model's
attributes need nothing above ``common.models``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from common.labelled import Labelled
from common.models.capture import resolve_layers


def _stack(model, layers, name: str, perm: tuple[int, ...] | None = None
           ) -> tuple[jax.Array, dict, dict]:
    """The stacked attention parameter ``name`` (``[n_layers, ...]``) at ``layers``, axes
    permuted by ``perm``: the model's own stack, unsliced, when every layer is asked for."""
    n = model.config.n_layers
    layers = resolve_layers(layers, n)
    w = getattr(model.blocks.attn, name)[...]
    if layers != tuple(range(n)):
        w = w[np.asarray(layers)]
    if perm is not None:
        w = jnp.transpose(w, perm)
    return w, {"layer": layers}, {"layer": n}


def _expand_kv(w: jax.Array, group: int) -> jax.Array:
    """``[layer, kv_head, ...] -> [layer, head, ...]`` (query head h reads kv head h // group)."""
    return jnp.repeat(w, group, axis=1)


def W_Q(model, layers: Iterable[int] | None = None) -> Labelled:
    """``[layer, head, d_model, d_head]``."""
    w, c, e = _stack(model, layers, "q_kernel", (0, 2, 1, 3))
    return Labelled(w, ("layer", "head", "d_model", "d_head"), c, e)


def W_K(model, layers: Iterable[int] | None = None, *, expand: bool = True) -> Labelled:
    """``[layer, head, d_model, d_head]`` (``[layer, kv_head, ...]`` with ``expand=False``)."""
    w, c, e = _stack(model, layers, "k_kernel", (0, 2, 1, 3))
    if expand:
        return Labelled(_expand_kv(w, model.config.group),
                        ("layer", "head", "d_model", "d_head"), c, e)
    return Labelled(w, ("layer", "kv_head", "d_model", "d_head"), c, e)


def W_V(model, layers: Iterable[int] | None = None, *, expand: bool = True) -> Labelled:
    """``[layer, head, d_model, d_head]`` (``[layer, kv_head, ...]`` with ``expand=False``)."""
    w, c, e = _stack(model, layers, "v_kernel", (0, 2, 1, 3))
    if expand:
        return Labelled(_expand_kv(w, model.config.group),
                        ("layer", "head", "d_model", "d_head"), c, e)
    return Labelled(w, ("layer", "kv_head", "d_model", "d_head"), c, e)


def W_O(model, layers: Iterable[int] | None = None) -> Labelled:
    """``[layer, head, d_head, d_model]``."""
    w, c, e = _stack(model, layers, "o_kernel")
    return Labelled(w, ("layer", "head", "d_head", "d_model"), c, e)


def b_O(model, layers: Iterable[int] | None = None) -> Labelled:
    """``[layer, d_model]`` output bias (zeros for models without one)."""
    if model.blocks.attn.o_bias is None:
        layers = resolve_layers(layers, model.config.n_layers)
        w = jnp.zeros((len(layers), model.config.d_model))
        c, e = {"layer": layers}, {"layer": model.config.n_layers}
    else:
        w, c, e = _stack(model, layers, "o_bias")
    return Labelled(w, ("layer", "d_model"), c, e)


def OV(model, layers: Iterable[int] | None = None) -> Labelled:
    """Per-head OV circuit ``W_V[h] @ W_O[h]``: ``[layer, head, d_model_in, d_model_out]``.

    Memory is ``layers·heads·d_model²`` floats (SmolLM2: 12 MB per layer, 360 MB for all 30);
    pass ``layers`` for large models.
    """
    wv, wo = W_V(model, layers), W_O(model, layers)
    ov = jnp.einsum("lhdk,lhke->lhde", wv.values, wo.values)
    return Labelled(ov, ("layer", "head", "d_model_in", "d_model_out"), wv.coords, wv.extents)


def QK(model, layers: Iterable[int] | None = None) -> Labelled:
    """Per-head QK circuit ``W_Q[h] @ W_K[h]ᵀ``: ``[layer, head, d_model_query, d_model_key]``.

    Ignores RoPE (the score between residual vectors at relative distance 0).
    """
    wq, wk = W_Q(model, layers), W_K(model, layers)
    qk = jnp.einsum("lhdk,lhek->lhde", wq.values, wk.values)
    return Labelled(qk, ("layer", "head", "d_model_query", "d_model_key"), wq.coords, wq.extents)


def W_E(model) -> Labelled:
    """Token embedding ``[vocab, d_model]``."""
    return Labelled(model.embed.embedding[...], ("vocab", "d_model"))


def W_U(model) -> Labelled:
    """Unembedding ``[d_model, vocab]`` (the transposed embedding for tied models)."""
    if model.lm_head is None:
        return Labelled(model.embed.embedding[...].T, ("d_model", "vocab"))
    return Labelled(model.lm_head[...], ("d_model", "vocab"))


def effective_embedding(model, token_ids: jax.Array | None = None, *,
                        mode: str = "mlp0") -> jax.Array:
    """Effective token embeddings ``[n_tokens, d_model]`` (the residual a later head reads).

    Args:
      token_ids: ``[n]`` tokens (default: the whole vocabulary).
      mode: ``"mlp0"``: ``x + MLP_0(norm(x))`` with the embedding ``x`` (attention skipped,
        as in the successor-heads paper); ``"block0"``: block 0 on each token as a
        one-token sequence (attention then attends to the token itself).
    """
    ids = jnp.arange(model.config.vocab_size) if token_ids is None else jnp.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"effective_embedding: token_ids must be [n], got {ids.shape}")
    x = model.embed_tokens(ids[:, None], jnp.zeros((ids.shape[0], 1), jnp.int32))
    block = model.block(0)
    if mode == "mlp0":
        return (x + block.mlp(block.mlp_norm(x)))[:, 0]
    if mode == "block0":
        return model.run_blocks(x, positions=jnp.zeros((ids.shape[0], 1), jnp.int32),
                                mask=None, start=0, stop=1)[:, 0]
    raise ValueError(f"effective_embedding: mode must be 'mlp0' or 'block0', got {mode!r}")


@dataclasses.dataclass(frozen=True)
class LensConfig:
    """``model.cfg``: the model's sizes under TransformerLens' ``HookedTransformerConfig``
    names (read-only; the model's own configuration is ``model.config``).

    ``n_key_value_heads`` is None for models without grouped-query attention, as in
    TransformerLens; ``d_vocab_out`` equals ``d_vocab``.
    """

    n_layers: int
    n_heads: int
    n_key_value_heads: int | None
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    act_fn: str
    normalization_type: str
    positional_embedding_type: str
    rotary_base: float | None
    rotary_dim: int | None
    gated_mlp: bool
    parallel_attn_mlp: bool
    original_architecture: str


_ACT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def lens_config(config) -> LensConfig:
    """A :class:`LensConfig` from a :class:`~common.models.config.ModelConfig`.

    TransformerLens' ``default_prepend_bos`` is not here: whether a BOS is prepended is the
    tokenizer's business (``tokenizer.add_bos_token``, the default of ``to_tokens``).
    """
    rope = config.pos == "rope"
    return LensConfig(
        n_layers=config.n_layers, n_heads=config.n_heads,
        n_key_value_heads=config.n_kv_heads if config.n_kv_heads != config.n_heads else None,
        d_model=config.d_model, d_head=config.d_head, d_mlp=config.d_mlp,
        d_vocab=config.vocab_size, d_vocab_out=config.vocab_size, n_ctx=config.max_position,
        act_fn=_ACT.get(config.act, config.act),
        normalization_type="RMS" if config.norm == "rms" else "LN",
        positional_embedding_type="rotary" if rope else "standard",
        rotary_base=config.rope_theta if rope else None,
        rotary_dim=(config.rotary_dim or config.d_head) if rope else None,
        gated_mlp=config.gated_mlp, parallel_attn_mlp=config.parallel_residual,
        original_architecture=config.arch,
    )

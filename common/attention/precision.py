"""The accumulation dtype of the core: "at least float32".

Norms, RoPE angles, attention logits and softmax, and the unembedding are computed in
``jnp.promote_types(x.dtype, jnp.float32)``: a bfloat16 (or float16) model accumulates in
float32, a float32 model computes in float32, and a float64 model stays float64 end to end
(only with 64-bit JAX: ``jax.config.update("jax_enable_x64", True)`` or
``with jax.enable_x64(True):``; see :class:`common.models.config.ModelConfig`), which the
tiny-model tests use to compare against references at ~1e-12.
"""

from __future__ import annotations

import jax.numpy as jnp


def accum_dtype(dtype) -> jnp.dtype:
    """``promote_types(dtype, float32)``: float32 for bf16/f16/f32 inputs, float64 for f64."""
    return jnp.promote_types(dtype, jnp.float32)


def lowest(dtype) -> float:
    """The most negative finite value of ``accum_dtype(dtype)``: a masked logit."""
    return jnp.finfo(accum_dtype(dtype)).min

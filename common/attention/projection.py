"""The per-head projections as two-dimensional matmuls.

``q_kernel [d_model, heads, head_dim]`` and ``o_kernel [heads, head_dim, d_model]`` keep the head
axis explicit, but the products with them are written here over the kernels viewed as
``[d_model, heads * head_dim]`` and ``[heads * head_dim, d_model]`` (a reshape of a row-major
array, free). The numbers are the same; the reason is XLA:CPU. Given the three-dimensional
einsums ``bsd,dhk->bshk`` / ``bshk,hkd->bsd``, its dot decomposition copies a transposed kernel
on every call of the backward pass (a kernel contracted over its minor axes), whereas a 2-D dot
with a transposed operand runs natively. Measured here on 30 layers of SmolLM2's q/o shapes
(``[1, 8, 576]`` activations): forward 14.2 -> 6.9 ms, gradient with respect to the input
119 -> 11.9 ms. Sharded kernels reshape fine: ``heads`` stays the major part of the merged axis.
"""

from __future__ import annotations

import jax


def project_heads(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x [..., d_model] @ kernel [d_model, heads, head_dim]`` -> ``[..., heads, head_dim]``."""
    d, h, k = kernel.shape
    return (x @ kernel.reshape(d, h * k)).reshape(*x.shape[:-1], h, k)


def merge_heads(z: jax.Array, kernel: jax.Array) -> jax.Array:
    """``z [..., heads, head_dim]`` summed through ``kernel [heads, head_dim, d_model]`` ->
    ``[..., d_model]`` (the output projection of every head, added)."""
    h, k, d = kernel.shape
    return z.reshape(*z.shape[:-2], h * k) @ kernel.reshape(h * k, d)

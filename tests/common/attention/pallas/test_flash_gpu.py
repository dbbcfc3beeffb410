"""The Mosaic GPU forward in GPU interpret mode on CPU (TMA copies, barriers, the causal loop
bound, masking, online softmax), with the blockwise XLA backward; vs the f32 einsum reference.

Interpret mode replaces the two ``wgmma`` calls by ``dot_general`` (the interpreter takes no
transposed or register operands) and drops register-layout casts; the compiled kernel is
checked by ``tools/bench_attention.py --device-check`` on a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

from common.attention.pallas.api import gpu_flash_attention
from tests.common.attention.pallas.helpers import brute_force_mask, compiled, reference


def test_gpu_kernel_interpret_causal_gqa_padding():
    b, sq, h, kvh, d = 1, 100, 2, 1, 64  # 100 -> two 64-row tiles; kv padded and masked
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(ks[0], (b, sq, h, d)).astype(jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, sq, kvh, d)).astype(jnp.bfloat16)
    v = jax.random.normal(ks[2], (b, sq, kvh, d)).astype(jnp.bfloat16)
    co = jax.random.normal(ks[3], (b, sq, h, d))
    scale = jnp.linspace(0.1, 0.2, h)

    def loss(attn):
        def f(q, k, v):
            out = attn(q, k, v)
            return jnp.sum(out.astype(jnp.float32) * co), out
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

    params = InterpretGPUParams()
    (_, out), grads = compiled(loss(lambda q, k, v: gpu_flash_attention(
        q, k, v, causal=True, scale=scale, interpret=params)), q, k, v)
    allowed = brute_force_mask(b, sq, sq, causal=True)
    (_, ref), r_grads = loss(lambda q, k, v: reference(q, k, v, allowed, scale)[0])(q, k, v)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)
    for g, rg in zip(grads, r_grads, strict=True):
        g, rg = np.asarray(g, np.float32), np.asarray(rg, np.float32)
        np.testing.assert_allclose(g, rg, rtol=5e-2, atol=5e-2 * max(1.0, np.abs(rg).max()))

"""Flash-attention forward for Mosaic GPU (Hopper: TMA copies, wgmma), one warpgroup per tile.

Layout: ``q [batch, q_pad, heads, head_dim]``, ``k, v [batch, kv_pad, kv_heads, head_dim]``
(the core's own layout: no transposes), bf16/f16, sequence axes padded to whole tiles.
Each program owns a ``block_q = 64`` query tile of one head (``grid = (batch, q_tiles,
heads)``); it streams K/V tiles of kv head ``h // group`` (grouped-query attention without
repeating K/V) through two shared-memory slots, prefetching tile ``i + 1`` by TMA while
``wgmma`` works on tile ``i``. Causal attention stops the loop at the diagonal (blocks above it
are never loaded), padded keys are masked by ``kv_len``. The per-head scale is folded into
``q`` before the kernel (one rounding of ``q·scale`` to the input dtype).

Scope (what the GPU path serves; everything else raises ``BackendUnsupported`` so ``auto``
falls back to cuDNN/XLA): forward only (the backward of ``api.flash_attention`` on GPU
recomputes blockwise in XLA from the saved logsumexp), plain or right-aligned causal
masks, key padding to whole tiles, head_dim a multiple of 64, bf16/f16.

Verification status: semantics checked on CPU in Mosaic GPU *interpret* mode
(``InterpretGPUParams``), which simulates TMA copies, barriers and wgmma but not shared-memory
layouts, swizzling, register pressure or timing. It has not been compiled for or run on a GPU
in this repository yet: ``tools/bench_attention.py --device-check`` does that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
BLOCK_Q = 64  # one warpgroup's wgmma M


@functools.partial(
    jax.jit, static_argnames=("causal", "kv_len", "q_len", "block_kv", "interpret"))
def gpu_flash_forward(q, k, v, *, causal: bool, q_len: int, kv_len: int, block_kv: int = 64,
                      interpret=None):
    """``(out [b, q_pad, h, d], lse [b, h, q_pad] f32)`` for pre-scaled ``q``.

    ``q_len``/``kv_len`` are the unpadded lengths: causal queries are right-aligned to the keys
    (query ``i`` sees keys ``j <= i + kv_len - q_len``) and keys ``>= kv_len`` are masked.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    dtype = q.dtype
    n_q, n_kv = sq // BLOCK_Q, skv // block_kv
    offset = kv_len - q_len
    swizzle = 128 if d * jnp.dtype(dtype).itemsize >= 128 else d * jnp.dtype(dtype).itemsize
    elems = swizzle // jnp.dtype(dtype).itemsize
    transforms = (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(swizzle))
    # Register layouts are hints for the compiled kernel; interpret mode has no rule for them.
    row, tile = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA

    def cast(x, layout):
        return x if interpret else plgpu.layout_cast(x, layout)

    def iota(dim):
        shape = (BLOCK_Q, block_kv)
        if interpret:
            return lax.broadcasted_iota(jnp.int32, shape, dim)
        return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=tile)

    def body(q_ref, k_ref, v_ref, o_ref, lse_ref,
             q_smem, k_smem, v_smem, lse_smem, q_bar, k_bar, v_bar):
        bi = lax.axis_index("batch")
        qt = lax.axis_index("q_tiles")
        hi = lax.axis_index("heads")
        kv_head = lax.div(hi, jnp.array(g, hi.dtype))
        q0 = qt * BLOCK_Q
        plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(q0, BLOCK_Q), hi], q_smem, q_bar.at[0])
        if causal:
            last_key = q0 + BLOCK_Q - 1 + offset
            steps = jnp.clip(lax.div(last_key, jnp.array(block_kv, last_key.dtype)) + 1, 0, n_kv)
        else:
            steps = jnp.array(n_kv, jnp.int32)

        def load(step, slot):
            src = (bi, pl.ds(step * block_kv, block_kv), kv_head)
            plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem.at[slot], v_bar.at[slot])

        @pl.when(steps > 0)
        def _():
            load(0, 0)

        plgpu.barrier_wait(q_bar.at[0])
        m = cast(jnp.full((BLOCK_Q,), MASK_VALUE, jnp.float32), row)
        l = cast(jnp.full((BLOCK_Q,), 0.0, jnp.float32), row)
        acc = cast(jnp.full((BLOCK_Q, d), 0.0, jnp.float32), tile)

        def step_fn(step, carry):
            acc, m, l = carry
            slot = lax.rem(step, jnp.array(2, step.dtype))

            @pl.when(step + 1 < steps)
            def _():  # slot 1 - slot was read by step - 1, whose wgmmas have completed
                load(step + 1, 1 - slot)

            plgpu.barrier_wait(k_bar.at[slot])

            def qk_fn(acc_ref):
                plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                return acc_ref[...]

            if interpret:  # the interpreter's wgmma takes no transposed operand
                s = lax.dot_general(q_smem[...], k_smem[slot], (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32)
            else:
                s = pl.run_scoped(qk_fn, plgpu.ACC((BLOCK_Q, block_kv), jnp.float32))
            kv_ids = step * block_kv + iota(1)
            visible = kv_ids < kv_len
            if causal:
                q_ids = q0 + offset + iota(0)
                visible = visible & (kv_ids <= q_ids)
            s = jnp.where(visible, s, MASK_VALUE)
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp(m - m_new)
            p = jnp.exp(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
            p = jnp.where(visible, p, 0.0)
            l = l * alpha + p.sum(axis=1)
            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
            plgpu.barrier_wait(v_bar.at[slot])

            def pv_fn(acc_ref):
                plgpu.wgmma(acc_ref, p.astype(dtype), v_smem.at[slot])
                return acc_ref[...]

            # A fresh accumulator plus a register add (interpret mode has no ``run_state`` for an
            # in-place ``ACC.init(acc)``; the add costs one FMA per output element per tile).
            if interpret:  # ... nor a register operand
                pv = lax.dot_general(p.astype(dtype), v_smem[slot], (((1,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)
            else:
                pv = pl.run_scoped(pv_fn, plgpu.ACC((BLOCK_Q, d), jnp.float32))
            acc = acc + pv
            return acc, m_new, l

        acc, m, l = lax.fori_loop(0, steps, step_fn, (acc, m, l))
        ok = l > 0
        inv = jnp.where(ok, 1.0 / jnp.where(ok, l, 1.0), 0.0)
        q_smem[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(dtype)
        lse_smem[...] = jnp.where(ok, m + jnp.log(jnp.where(ok, l, 1.0)), -jnp.inf)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, o_ref.at[bi, pl.ds(q0, BLOCK_Q), hi])
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bi, hi, pl.ds(q0, BLOCK_Q)])
        plgpu.wait_smem_to_gmem(0)

    return plgpu.kernel(
        body,
        out_type=[jax.ShapeDtypeStruct(q.shape, dtype),
                  jax.ShapeDtypeStruct((b, h, sq), jnp.float32)],
        scratch_types=[
            plgpu.SMEM((BLOCK_Q, d), dtype, transforms=transforms),
            plgpu.SMEM((2, block_kv, d), dtype, transforms=transforms),
            plgpu.SMEM((2, block_kv, d), dtype, transforms=transforms),
            plgpu.SMEM((BLOCK_Q,), jnp.float32),
            plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_barriers=2),
            plgpu.Barrier(num_barriers=2),
        ],
        grid=(b, n_q, h),
        grid_names=("batch", "q_tiles", "heads"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
    )(q, k, v)

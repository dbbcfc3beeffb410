"""Public entry points: :func:`flash_attention` and the backend hook :func:`pallas_attention`.

Shapes follow the core: ``q [batch, q_len, heads, head_dim]``, ``k, v [batch, kv_len,
kv_heads, head_dim]``, ``heads = kv_heads * group``. The kernels run on the ``[batch, heads,
seq, head_dim]`` layout; this module transposes, pads the sequence axes to whole blocks
(padded keys are masked, padded query rows dropped) and builds the block-sparse mask.

Per-head position ids (PINE) go through pre-rotated q/k: rotate ``q`` and ``k`` with
``RoPE.apply(x, positions [batch, heads, seq])`` *before* the call. When key positions differ
between query heads of one kv group, the rotated keys differ too, so expand K/V to ``heads``
heads first (``kv_heads = heads``: each head then reads its own rotated keys). The mask's
order positions (``Mask.q_positions`` / ``kv_positions``) are separate from the RoPE positions,
so re-assigned RoPE positions never change which keys are visible. Key positions that depend
on the *query group* (PINE's per-suffix-token orderings) need one call per query group with
that group's queries and its own rotated keys.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import jax
import jax.numpy as jnp

import common.attention.pallas.flash_gpu as flash_gpu
import common.attention.pallas.flash_tpu as flash_tpu
from common.attention.contract import BackendUnsupported, check_qkv
from common.attention.masks import Mask
from common.attention.pallas.block_mask import block_states, mask_operands
from common.attention.pallas.block_sizes import BlockSizes, fit_block

_INTERPRET: list = [None]  # None: interpret on CPU only; else the value given to pallas_call


@contextlib.contextmanager
def interpret_mode(params=True):
    """Run the kernels in Pallas interpret mode (``True``, or ``pltpu.InterpretParams(...)``)."""
    _INTERPRET.append(params)
    try:
        yield
    finally:
        _INTERPRET.pop()


def _interpret_for(platform: str):
    if _INTERPRET[-1] is not None:
        return _INTERPRET[-1]
    return platform == "cpu"  # no Pallas lowering for CPU: interpret there


def _check(q, k, v, scale):
    check_qkv(q, k, v)
    h = q.shape[2]
    if scale.shape != (h,):
        raise ValueError(f"scale must be [{h}] (one per head), got {scale.shape}")


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: Mask | None = None,
    scale: float | jax.Array | None = None,
    softcap: float | None = None,
    block_sizes: BlockSizes | None = None,
    return_lse: bool = False,
    act_sinks: jax.Array | None = None,
    act_beta: float | jax.Array | None = None,
):
    """Flash attention with a block-sparse mask; differentiable (``custom_vjp``).

    Args:
      q: ``[batch, q_len, heads, head_dim]``.
      k, v: ``[batch, kv_len, kv_heads, head_dim]``.
      mask: a :class:`Mask` (causal with order positions, segment ids, padding, dense) or a
        :class:`~common.attention.masks.PineMask`; None attends everywhere.
      scale: scalar or ``[heads]`` softmax scale (default ``1/sqrt(head_dim)``).
      softcap: optional ``c·tanh(logits/c)``.
      block_sizes: tiles; default :meth:`BlockSizes.default` for the platform.
      return_lse: also return ``lse [batch, heads, q_len]`` f32, the log-sum-exp of each row's
        logits, so that any head's pattern can be recomputed exactly as
        ``exp(logits - lse)``. ``-inf`` for fully masked rows.
      act_sinks: fused ACT calibration (forward only): ``[batch, heads|1, kv_len]`` bool, the
        sink columns (already chosen, e.g. by the column-mean rule); with ``act_beta``
        (scalar or ``[heads]``; ``1`` leaves a head unchanged).

    Returns:
      ``out [batch, q_len, heads, head_dim]`` or ``(out, lse)``.
    """
    b, sq, h, d = q.shape
    if scale is None:
        scale = d**-0.5
    scale = jnp.asarray(scale, jnp.float32)
    scale = jnp.full((h,), scale) if scale.ndim == 0 else scale
    _check(q, k, v, scale)
    skv = k.shape[1]
    platform = jax.default_backend()
    bs = block_sizes or BlockSizes.default(platform)
    bs.validate_for(platform)
    interpret = _interpret_for(platform)
    kv_align = 128 if (platform == "tpu" and not interpret) else 8
    blocks = tuple(
        (fit_block(bq, sq), fit_block(bk, skv, kv_align)) for bq, bk in (bs.fwd, bs.dkv, bs.dq)
    )
    lq = math.lcm(*(bq for bq, _ in blocks))
    lk = math.lcm(*(bk for _, bk in blocks))
    q_pad = -(-sq // lq) * lq
    kv_pad = -(-skv // lk) * lk
    ops = mask_operands(mask, b, sq, skv, q_pad, kv_pad)
    cfg = flash_tpu.KernelConfig(
        causal=ops.causal,
        segments=ops.segments,
        pine=ops.pine,
        dense_batch=0 if ops.dense is None else ops.dense.shape[0],
        dense_heads=0 if ops.dense is None else ops.dense.shape[1],
        softcap=None if softcap is None else float(softcap),
        interpret=interpret,
    )
    if cfg.dense_heads not in (0, 1, h) or cfg.dense_batch not in (0, 1, b):
        raise ValueError(f"Mask.dense {ops.dense.shape} does not broadcast to batch {b}, "
                         f"heads {h}")
    states = []
    for bq, bk in blocks:
        st = block_states(ops, bq, bk)
        if st is None:
            st = jnp.full((b, 1, q_pad // bq, kv_pad // bk), flash_tpu.FULL, jnp.int32)
        elif st.shape[0] != b:
            st = jnp.broadcast_to(st, (b,) + st.shape[1:])
        states.append(st)
    states = tuple(states)

    def to_kernel(x, length):
        x = jnp.swapaxes(x, 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))

    qt, kt, vt = to_kernel(q, q_pad), to_kernel(k, kv_pad), to_kernel(v, kv_pad)
    if act_sinks is not None:
        if act_beta is None:
            raise ValueError("act_sinks needs act_beta")
        sinks = jnp.asarray(act_sinks)
        if sinks.ndim != 3 or sinks.shape[0] != b or sinks.shape[1] not in (1, h) or (
                sinks.shape[2] != skv):
            raise ValueError(f"act_sinks must be [{b}, {h}|1, {skv}], got {sinks.shape}")
        sinks = jnp.pad(sinks.astype(jnp.float32), ((0, 0), (0, 0), (0, kv_pad - skv)))
        beta = jnp.broadcast_to(jnp.asarray(act_beta, jnp.float32), (h,))
        out, lse = flash_tpu.flash_forward(
            cfg, qt, kt, vt, scale, ops, states[0], *blocks[0], sink=sinks[:, :, None, :],
            beta=beta)
        lse = lse[..., 0]
    else:
        out, lse = flash_tpu.flash_attention_core(cfg, blocks, qt, kt, vt, scale, ops, states)
    out = jnp.swapaxes(out[:, :, :sq], 1, 2)
    if return_lse:
        return out, lse[:, :, :sq]
    return out


def recompute_pattern(
    q: jax.Array,
    k: jax.Array,
    lse: jax.Array,
    heads,
    *,
    mask: Mask | None = None,
    scale: float | jax.Array | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """The exact pattern ``[batch, len(heads), q_len, kv_len]`` of chosen heads from the lse.

    ``lse [batch, heads, q_len]`` is :func:`flash_attention`'s ``return_lse`` output; only the
    chosen heads' logits are formed (f32), so a fast forward plus this costs
    ``O(len(heads)·q_len·kv_len)`` instead of every head's pattern.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    heads = jnp.asarray(heads, jnp.int32)
    if scale is None:
        scale = d**-0.5
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (h,))[heads]
    qh = jnp.take(q, heads, axis=2)
    kh = jnp.take(k, heads // (h // kvh), axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh, preferred_element_type=jnp.float32)
    logits = logits * scale[None, :, None, None]
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    lse_h = jnp.take(lse, heads, axis=1)
    p = jnp.exp(logits - jnp.where(jnp.isfinite(lse_h), lse_h, 0.0)[..., None])
    if mask is not None:
        m = mask.materialize(b, sq, skv)
        if m is not None:
            m = m if m.shape[1] == 1 else jnp.take(m, heads, axis=1)
            p = jnp.where(m, p, 0.0)
    return jnp.where(jnp.isfinite(lse_h)[..., None], p, 0.0)


GPU_OPT_IN = "HEADLAB_PALLAS_GPU"


def _gpu_unsupported(q, k, mask, softcap) -> str | None:
    """Why the Mosaic GPU kernel cannot serve this call, or None."""
    if os.environ.get(GPU_OPT_IN) != "1":
        return (f"Mosaic GPU kernel not yet verified on hardware (set {GPU_OPT_IN}=1 to use it; "
                "tools/bench_attention.py --device-check does)")
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return f"GPU kernel needs bf16/f16, got {q.dtype}"
    if q.shape[-1] % 64:
        return f"GPU kernel needs head_dim % 64 == 0, got {q.shape[-1]}"
    if softcap is not None:
        return "GPU kernel: no softcap"
    if mask is not None and not mask.is_empty and not mask.is_plain_causal:
        return "GPU kernel: only no mask or the plain causal mask"
    return None


def gpu_flash_attention(q, k, v, *, causal: bool, scale: jax.Array, block_kv: int = 64,
                        interpret=None):
    """Mosaic GPU forward (``flash_gpu``) with a blockwise-XLA backward from the saved lse."""
    b, sq, h, d = q.shape
    skv = k.shape[1]
    q_pad = -(-sq // flash_gpu.BLOCK_Q) * flash_gpu.BLOCK_Q
    kv_pad = -(-skv // block_kv) * block_kv
    qs = (q.astype(jnp.float32) * scale[:, None]).astype(q.dtype)
    qs = jnp.pad(qs, ((0, 0), (0, q_pad - sq), (0, 0), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, kv_pad - skv), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, kv_pad - skv), (0, 0), (0, 0)))
    out = _gpu_core(causal, sq, skv, block_kv, interpret, qs, kp, vp)
    return out[:, :sq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _gpu_core(causal, q_len, kv_len, block_kv, interpret, q, k, v):
    return flash_gpu.gpu_flash_forward(q, k, v, causal=causal, q_len=q_len, kv_len=kv_len,
                                       block_kv=block_kv, interpret=interpret)[0]


def _gpu_core_fwd(causal, q_len, kv_len, block_kv, interpret, q, k, v):
    out, lse = flash_gpu.gpu_flash_forward(q, k, v, causal=causal, q_len=q_len, kv_len=kv_len,
                                           block_kv=block_kv, interpret=interpret)
    return out, (q, k, v, out, lse)


def _gpu_core_bwd(causal, q_len, kv_len, block_kv, interpret, res, do):
    """Blockwise backward in XLA: one kv tile at a time, memory linear in sequence length."""
    q, k, v, out, lse = res
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    f32 = jnp.float32
    qg = q.reshape(b, sq, kvh, g, d)
    dog = do.reshape(b, sq, kvh, g, d).astype(q.dtype)
    di = jnp.einsum("bqkgd,bqkgd->bkgq", dog.astype(f32), out.reshape(qg.shape).astype(f32))
    lse = lse.reshape(b, kvh, g, sq)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    q_ids = jnp.arange(sq)[:, None] + (kv_len - q_len)
    n = skv // block_kv

    def tile(j):
        kj = jax.lax.dynamic_slice_in_dim(k, j * block_kv, block_kv, 1)
        vj = jax.lax.dynamic_slice_in_dim(v, j * block_kv, block_kv, 1)
        kv_ids = j * block_kv + jnp.arange(block_kv)[None, :]
        vis = kv_ids < kv_len
        if causal:
            vis = vis & (kv_ids <= q_ids)
        s = jnp.einsum("bqkgd,bskd->bkgqs", qg, kj, preferred_element_type=f32)
        p = jnp.where(vis, jnp.exp(s - lse[..., None]), 0.0)
        dv = jnp.einsum("bkgqs,bqkgd->bskd", p.astype(q.dtype), dog, preferred_element_type=f32)
        dp = jnp.einsum("bqkgd,bskd->bkgqs", dog, vj, preferred_element_type=f32)
        ds = (p * (dp - di[..., None])).astype(q.dtype)
        dq = jnp.einsum("bkgqs,bskd->bqkgd", ds, kj, preferred_element_type=f32)
        dk = jnp.einsum("bkgqs,bqkgd->bskd", ds, qg, preferred_element_type=f32)
        return dq, dk, dv

    def body(dq, j):
        dq_j, dk_j, dv_j = tile(j)
        return dq + dq_j, (dk_j, dv_j)

    dq, (dk, dv) = jax.lax.scan(body, jnp.zeros(qg.shape, f32), jnp.arange(n))
    dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_gpu_core.defvjp(_gpu_core_fwd, _gpu_core_bwd)


def pallas_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: Mask | None,
    scale: jax.Array,
    softcap: float | None = None,
) -> jax.Array:
    """The ``pallas`` backend of :func:`common.attention.core.dot_product_attention`.

    TPU (and CPU, in interpret mode): the Mosaic TPU kernels with every mask feature. GPU: the
    Mosaic GPU forward for bf16/f16, no mask or plain causal, head_dim % 64 == 0, opt-in via
    ``HEADLAB_PALLAS_GPU=1`` until it has run on hardware. Anything else raises
    :class:`BackendUnsupported`, so ``auto`` falls back.
    """
    platform = jax.default_backend()
    if platform == "gpu" and _INTERPRET[-1] is None:
        reason = _gpu_unsupported(q, k, mask, softcap)
        if reason is not None:
            raise BackendUnsupported(f"pallas: {reason}")
        causal = mask is not None and mask.causal
        return gpu_flash_attention(q, k, v, causal=causal, scale=scale)
    if platform not in ("tpu", "gpu", "cpu"):
        raise BackendUnsupported(f"pallas: platform {platform!r}")
    if q.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise BackendUnsupported(f"pallas: dtype {q.dtype}")
    if platform == "tpu" and q.shape[-1] % 128 and q.shape[-1] != 64:
        raise BackendUnsupported(f"pallas: head_dim {q.shape[-1]} (TPU needs 64 or 128k)")
    return flash_attention(q, k, v, mask=mask, scale=scale, softcap=softcap)

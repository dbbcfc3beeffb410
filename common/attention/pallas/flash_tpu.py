"""Flash attention for Mosaic TPU Pallas: forward, backward (``dk/dv`` and ``dq`` kernels).

Layout inside this module: ``q [batch, heads, q_pad, head_dim]``, ``k, v [batch, kv_heads,
kv_pad, head_dim]`` with the sequence axes padded to whole blocks (``api.py`` transposes and
pads). Grouped-query attention never repeats K/V: the K/V index maps read kv head
``h // group`` for query head ``h``, and the ``dk/dv`` kernel reduces over the ``group`` query
heads of its kv head inside its grid (axes ``(batch, kv_heads, kv_blocks, group, q_blocks)``).

Online softmax (Milakov & Gimelshein; Dao et al.): per query row a running max ``m``, a running
sum ``l`` and an f32 accumulator; the ``[q_len, kv_len]`` pattern is never materialised. The
block-state array of :mod:`block_mask` arrives by scalar prefetch: ``EMPTY`` blocks are skipped
and their K/V copy is elided (the index map repeats the previous block), ``FULL`` blocks run
without any mask arithmetic, ``PARTIAL`` blocks evaluate the mask from per-token operands.

Fully masked query rows produce ``out = 0`` and ``lse = -inf`` (the ``reference`` backend gives
them a uniform pattern instead; no valid computation depends on either).

The fused ACT variant (``act=True``; Yu et al. 2024, ``papers/act_calibration.md`` §4) keeps
two accumulators, one over the given sink columns and one over the rest, sharing ``m``:
``out = (β·acc_sink + (1 + (1-β)·l_sink/l_rest)·acc_rest) / l`` is exactly the calibrated
pattern times ``V``. It is forward-only (ACT is an inference-time edit).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from common.attention.pallas.block_mask import EMPTY, FULL, PARTIAL, MaskOperands, fetch_indices

# A finite "minus infinity": keeps exp(m_prev - m_new) well defined for fully masked rows.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_DOT_NT = (((1,), (1,)), ((), ()))  # a [m, d] x b [n, d] -> [m, n]
_DOT_TN = (((0,), (0,)), ((), ()))  # a [m, n] x b [m, d] -> [n, d]


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static configuration of one kernel launch."""

    causal: bool
    segments: bool
    pine: bool
    dense_batch: int  # 0: no dense mask; else its batch dim (1 or batch)
    dense_heads: int  # its heads dim (1 or heads)
    softcap: float | None
    interpret: object  # False, True or pltpu.InterpretParams


def _mask_specs(cfg: KernelConfig, ops: MaskOperands, q_block, kv_block, q_map, kv_map, head):
    """Arrays and BlockSpecs of the per-token mask operands.

    ``q_map(*grid, *prefetch) -> (batch, q_block_index)``, ``kv_map`` likewise for keys,
    ``head(*grid) -> query head``.
    """
    arrays, specs = [], []

    def q_side(x):  # [b, s] -> [b, s, 1]: a column per q tile
        arrays.append(x[:, :, None])
        specs.append(pl.BlockSpec((None, q_block, 1), lambda *a: (*q_map(*a), 0)))

    def kv_side(x):  # [b, s] -> [b, 1, s]: a row per kv tile
        arrays.append(x[:, None, :])
        specs.append(pl.BlockSpec((None, 1, kv_block), lambda *a: (q_map(*a)[0], 0, kv_map(*a)[1])))

    if cfg.causal:
        q_side(ops.q_pos)
        kv_side(ops.kv_pos)
    if cfg.segments:
        q_side(ops.q_seg)
        kv_side(ops.kv_seg)
    if cfg.pine:
        q_side(ops.q_doc)
        kv_side(ops.kv_doc)
    if cfg.dense_batch:
        arrays.append(ops.dense)

        def dmap(*a):
            bi = q_map(*a)[0] if cfg.dense_batch > 1 else 0
            hi = head(*a) if cfg.dense_heads > 1 else 0
            return bi, hi, q_map(*a)[1], kv_map(*a)[1]

        specs.append(pl.BlockSpec((None, None, q_block, kv_block), dmap))
    return arrays, specs


def _num_mask_refs(cfg: KernelConfig) -> int:
    return 2 * (int(cfg.causal) + int(cfg.segments) + int(cfg.pine)) + int(bool(cfg.dense_batch))


def _elementwise_mask(cfg: KernelConfig, refs) -> jax.Array:
    """``[q_block, kv_block]`` bool from the loaded mask operand tiles."""
    it = iter(refs)
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if cfg.causal:
        qp, kp = next(it)[...], next(it)[...]
        vis = kp <= qp
    if cfg.segments:
        qs, ks = next(it)[...], next(it)[...]
    if cfg.pine:
        qd, kd = next(it)[...], next(it)[...]
        vis = vis | ((qd > 0) & (kd > 0) & (qd != kd))
    if cfg.causal:
        mask = both(mask, vis)
    if cfg.segments:
        mask = both(mask, qs == ks)
    if cfg.dense_batch:
        mask = both(mask, next(it)[...] != 0)
    return mask


def _logits(cfg: KernelConfig, q, k, scale):
    """Scaled (and soft-capped) f32 logits and ``tanh`` for the softcap derivative."""
    s = jax.lax.dot_general(q, k, _DOT_NT, preferred_element_type=jnp.float32) * scale
    if cfg.softcap is None:
        return s, None
    t = jnp.tanh(s / cfg.softcap)
    return cfg.softcap * t, t


def _state_index(hm: int, nq: int, nk: int):
    def idx(bi, hi, qi, ki):
        return ((bi * hm + (hi if hm > 1 else 0)) * nq + qi) * nk + ki

    return idx


def _compiler_params(sem):
    return pltpu.CompilerParams(dimension_semantics=sem)


# --------------------------------------------------------------------------------------------
# forward


def flash_forward(
    cfg: KernelConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: jax.Array,
    ops: MaskOperands,
    states: jax.Array,
    block_q: int,
    block_kv: int,
    sink: jax.Array | None = None,
    beta: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(out [b, h, q_pad, d] q.dtype, lse [b, h, q_pad, 1] f32)``.

    ``states [b, h|1, nq, nk]`` int32; with ``sink [b, h|1, 1, kv_pad]`` (f32 0/1) and ``beta
    [h]`` the fused ACT variant runs.
    """
    b, h, sq, d = q.shape
    kvh, skv = k.shape[1], k.shape[2]
    g = h // kvh
    nq, nk = sq // block_q, skv // block_kv
    hm = states.shape[1]
    act = sink is not None
    sidx = _state_index(hm, nq, nk)
    st_flat = states.reshape(-1)
    fe_flat = fetch_indices(states).reshape(-1)

    def fetch(bi, hi, qi, ki, st, fe, *_):
        return fe[sidx(bi, hi, qi, ki)]

    def q_map(bi, hi, qi, ki, *_):
        return bi, qi

    def kv_map(bi, hi, qi, ki, *pref):
        return bi, fetch(bi, hi, qi, ki, *pref)

    in_specs = [
        pl.BlockSpec((None, None, block_q, d), lambda bi, hi, qi, ki, *_: (bi, hi, qi, 0)),
        pl.BlockSpec(
            (None, None, block_kv, d),
            lambda bi, hi, qi, ki, *p: (bi, jax.lax.div(hi, g), fetch(bi, hi, qi, ki, *p), 0),
        ),
        pl.BlockSpec(
            (None, None, block_kv, d),
            lambda bi, hi, qi, ki, *p: (bi, jax.lax.div(hi, g), fetch(bi, hi, qi, ki, *p), 0),
        ),
    ]
    arrays = [q, k, v]
    m_arrays, m_specs = _mask_specs(
        cfg, ops, block_q, block_kv, q_map, kv_map, lambda bi, hi, *_: hi
    )
    arrays += m_arrays
    in_specs += m_specs
    prefetch = [st_flat, fe_flat, scale.astype(jnp.float32)]
    scratch = [
        pltpu.VMEM((block_q, 1), jnp.float32),
        pltpu.VMEM((block_q, 1), jnp.float32),
        pltpu.VMEM((block_q, d), jnp.float32),
    ]
    if act:
        hs = sink.shape[1]
        arrays.append(sink)
        in_specs.append(
            pl.BlockSpec(
                (None, None, 1, block_kv),
                lambda bi, hi, qi, ki, *p: (
                    bi, hi if hs > 1 else 0, 0, fetch(bi, hi, qi, ki, *p)),
            )
        )
        prefetch.append(beta.astype(jnp.float32))
        scratch += [pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, d), jnp.float32)]
    n_mask = _num_mask_refs(cfg)

    def kernel(*refs):
        st_ref, fe_ref, sc_ref = refs[:3]
        rest = refs[3:]
        if act:
            beta_ref, rest = rest[0], rest[1:]
        q_ref, k_ref, v_ref = rest[:3]
        mask_refs = rest[3 : 3 + n_mask]
        rest = rest[3 + n_mask :]
        if act:
            sink_ref, rest = rest[0], rest[1:]
        o_ref, lse_ref, m_ref, l_ref, acc_ref = rest[:5]
        if act:
            ls_ref, accs_ref = rest[5:7]
        bi, hi, qi, ki = (pl.program_id(i) for i in range(4))

        @pl.when(ki == 0)
        def _init():
            m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
            l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
            acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
            if act:
                ls_ref[...] = jnp.zeros(ls_ref.shape, jnp.float32)
                accs_ref[...] = jnp.zeros(accs_ref.shape, jnp.float32)

        state = st_ref[sidx(bi, hi, qi, ki)]

        def step(masked: bool):
            s, _ = _logits(cfg, q_ref[...], k_ref[...], sc_ref[hi])
            if masked:
                mask = _elementwise_mask(cfg, mask_refs)
                s = jnp.where(mask, s, MASK_VALUE)
            m_prev = m_ref[...]
            m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
            alpha = jnp.exp(m_prev - m_new)
            p = jnp.exp(s - m_new)
            if masked:
                p = jnp.where(mask, p, 0.0)
            m_ref[...] = m_new
            vv = v_ref[...]
            if act:
                is_sink = sink_ref[...] > 0  # [1, kv_block]
                p_sink = jnp.where(is_sink, p, 0.0)
                p = p - p_sink
                ls_ref[...] = alpha * ls_ref[...] + p_sink.sum(axis=1, keepdims=True)
                accs_ref[...] = alpha * accs_ref[...] + jax.lax.dot_general(
                    p_sink.astype(vv.dtype), vv, (((1,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32)
            l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
            acc_ref[...] = alpha * acc_ref[...] + jax.lax.dot_general(
                p.astype(vv.dtype), vv, (((1,), (0,)), ((), ())),
                preferred_element_type=jnp.float32)

        if n_mask:
            pl.when(state == PARTIAL)(lambda: step(True))
            pl.when(state == FULL)(lambda: step(False))
        else:
            pl.when(state != EMPTY)(lambda: step(False))

        @pl.when(ki == nk - 1)
        def _finish():
            l_rest = l_ref[...]
            if act:
                l_s = ls_ref[...]
                total = l_rest + l_s
                b_h = beta_ref[hi]
                gain = jnp.where(l_rest > 0, 1.0 + (1.0 - b_h) * l_s / l_rest, 1.0)
                num = b_h * accs_ref[...] + gain * acc_ref[...]
            else:
                total = l_rest
                num = acc_ref[...]
            ok = total > 0
            inv = jnp.where(ok, 1.0 / jnp.where(ok, total, 1.0), 0.0)
            o_ref[...] = (num * inv).astype(o_ref.dtype)
            lse_ref[...] = jnp.where(ok, m_ref[...] + jnp.log(jnp.where(ok, total, 1.0)),
                                     -jnp.inf)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch),
        grid=(b, h, nq, nk),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, block_q, d), lambda bi, hi, qi, ki, *_: (bi, hi, qi, 0)),
            pl.BlockSpec((None, None, block_q, 1), lambda bi, hi, qi, ki, *_: (bi, hi, qi, 0)),
        ],
        scratch_shapes=scratch,
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((b, h, sq, d), q.dtype),
            jax.ShapeDtypeStruct((b, h, sq, 1), jnp.float32),
        ],
        compiler_params=_compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="headlab_flash_fwd_act" if act else "headlab_flash_fwd",
    )(*prefetch, *arrays)


# --------------------------------------------------------------------------------------------
# backward


def _bwd_block(cfg, q, k, v, do, lse, di, scale, mask):
    """Shared backward algebra of one tile: ``(p, ds)`` with ``ds`` w.r.t. scaled logits."""
    s, t = _logits(cfg, q, k, scale)
    p = jnp.exp(s - lse)
    if mask is not None:
        p = jnp.where(mask, p, 0.0)
    dp = jax.lax.dot_general(do, v, _DOT_NT, preferred_element_type=jnp.float32)
    ds = p * (dp - di)
    if t is not None:
        ds = ds * (1.0 - t * t)
    return p, ds


def flash_backward_dkv(
    cfg: KernelConfig, q, k, v, do, lse, di, scale, ops: MaskOperands, states, block_q, block_kv
) -> tuple[jax.Array, jax.Array]:
    """``(dk, dv)`` ``[b, kv_heads, kv_pad, d]``; grid ``(b, kv_heads, nk, group, nq)``."""
    b, h, sq, d = q.shape
    kvh, skv = k.shape[1], k.shape[2]
    g = h // kvh
    nq, nk = sq // block_q, skv // block_kv
    hm = states.shape[1]
    sidx = _state_index(hm, nq, nk)
    tidx = _state_index(hm, nk, nq)  # transposed: (bi, hi, ki, qi)
    st_flat = states.reshape(-1)
    fe_flat = fetch_indices(jnp.swapaxes(states, -1, -2)).reshape(-1)

    def head(bi, khi, ki, gi, qi, *_):
        return khi * g + gi

    def qf(bi, khi, ki, gi, qi, st, fe, *_):
        return fe[tidx(bi, head(bi, khi, ki, gi, qi), ki, qi)]

    def q_map(*a):
        return a[0], qf(*a)

    def kv_map(bi, khi, ki, gi, qi, *_):
        return bi, ki

    def qspec(last):
        return pl.BlockSpec(
            (None, None, block_q, last), lambda *a: (a[0], head(*a), qf(*a), 0))

    kvspec = pl.BlockSpec((None, None, block_kv, d), lambda bi, khi, ki, *_: (bi, khi, ki, 0))
    m_arrays, m_specs = _mask_specs(cfg, ops, block_q, block_kv, q_map, kv_map, head)
    n_mask = len(m_arrays)

    def kernel(st_ref, fe_ref, sc_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, *rest):
        mask_refs = rest[:n_mask]
        dk_ref, dv_ref, dk_acc, dv_acc = rest[n_mask:]
        bi, khi, ki, gi, qi = (pl.program_id(i) for i in range(5))
        hi = khi * g + gi

        @pl.when((gi == 0) & (qi == 0))
        def _init():
            dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
            dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

        state = st_ref[sidx(bi, hi, qi, ki)]

        def step(masked: bool):
            mask = _elementwise_mask(cfg, mask_refs) if masked else None
            qq, do_ = q_ref[...], do_ref[...]
            p, ds = _bwd_block(cfg, qq, k_ref[...], v_ref[...], do_, lse_ref[...], di_ref[...],
                               sc_ref[hi], mask)
            dv_acc[...] += jax.lax.dot_general(
                p.astype(do_.dtype), do_, _DOT_TN, preferred_element_type=jnp.float32)
            dk_acc[...] += jax.lax.dot_general(
                ds.astype(qq.dtype), qq, _DOT_TN, preferred_element_type=jnp.float32
            ) * sc_ref[hi]

        if n_mask:
            pl.when(state == PARTIAL)(lambda: step(True))
            pl.when(state == FULL)(lambda: step(False))
        else:
            pl.when(state != EMPTY)(lambda: step(False))

        @pl.when((gi == g - 1) & (qi == nq - 1))
        def _finish():
            dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
            dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(b, kvh, nk, g, nq),
        in_specs=[qspec(d), kvspec, kvspec, qspec(d), qspec(1), qspec(1), *m_specs],
        out_specs=[kvspec, kvspec],
        scratch_shapes=[pltpu.VMEM((block_kv, d), jnp.float32)] * 2,
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(
            ("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=cfg.interpret,
        name="headlab_flash_bwd_dkv",
    )(st_flat, fe_flat, scale.astype(jnp.float32), q, k, v, do, lse, di, *m_arrays)


def flash_backward_dq(
    cfg: KernelConfig, q, k, v, do, lse, di, scale, ops: MaskOperands, states, block_q, block_kv
) -> jax.Array:
    """``dq [b, h, q_pad, d]``; grid ``(b, h, nq, nk)``."""
    b, h, sq, d = q.shape
    kvh, skv = k.shape[1], k.shape[2]
    g = h // kvh
    nq, nk = sq // block_q, skv // block_kv
    hm = states.shape[1]
    sidx = _state_index(hm, nq, nk)
    st_flat = states.reshape(-1)
    fe_flat = fetch_indices(states).reshape(-1)

    def kf(bi, hi, qi, ki, st, fe, *_):
        return fe[sidx(bi, hi, qi, ki)]

    def q_map(bi, hi, qi, ki, *_):
        return bi, qi

    def kv_map(*a):
        return a[0], kf(*a)

    def qspec(last):
        return pl.BlockSpec((None, None, block_q, last), lambda bi, hi, qi, *_: (bi, hi, qi, 0))

    kvspec = pl.BlockSpec(
        (None, None, block_kv, d), lambda *a: (a[0], jax.lax.div(a[1], g), kf(*a), 0))
    m_arrays, m_specs = _mask_specs(cfg, ops, block_q, block_kv, q_map, kv_map,
                                    lambda bi, hi, *_: hi)
    n_mask = len(m_arrays)

    def kernel(st_ref, fe_ref, sc_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, *rest):
        mask_refs = rest[:n_mask]
        dq_ref, dq_acc = rest[n_mask:]
        bi, hi, qi, ki = (pl.program_id(i) for i in range(4))

        @pl.when(ki == 0)
        def _init():
            dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

        state = st_ref[sidx(bi, hi, qi, ki)]

        def step(masked: bool):
            mask = _elementwise_mask(cfg, mask_refs) if masked else None
            kk = k_ref[...]
            _, ds = _bwd_block(cfg, q_ref[...], kk, v_ref[...], do_ref[...], lse_ref[...],
                               di_ref[...], sc_ref[hi], mask)
            dq_acc[...] += jax.lax.dot_general(
                ds.astype(kk.dtype), kk, (((1,), (0,)), ((), ())),
                preferred_element_type=jnp.float32) * sc_ref[hi]

        if n_mask:
            pl.when(state == PARTIAL)(lambda: step(True))
            pl.when(state == FULL)(lambda: step(False))
        else:
            pl.when(state != EMPTY)(lambda: step(False))

        @pl.when(ki == nk - 1)
        def _finish():
            dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(b, h, nq, nk),
        in_specs=[qspec(d), kvspec, kvspec, qspec(d), qspec(1), qspec(1), *m_specs],
        out_specs=qspec(d),
        scratch_shapes=[pltpu.VMEM((block_q, d), jnp.float32)],
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="headlab_flash_bwd_dq",
    )(st_flat, fe_flat, scale.astype(jnp.float32), q, k, v, do, lse, di, *m_arrays)


# --------------------------------------------------------------------------------------------
# custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def flash_attention_core(cfg, blocks, q, k, v, scale, ops, states):
    """``(out, lse)`` on padded ``[b, h, s, d]`` arrays; differentiable in q, k, v, scale.

    ``blocks = ((bq, bk) fwd, (bq, bk) dkv, (bq, bk) dq)``; ``states`` a matching triple.
    """
    out, lse = flash_forward(cfg, q, k, v, scale, ops, states[0], *blocks[0])
    return out, lse[..., 0]


def _core_fwd(cfg, blocks, q, k, v, scale, ops, states):
    out, lse = flash_forward(cfg, q, k, v, scale, ops, states[0], *blocks[0])
    return (out, lse[..., 0]), (q, k, v, scale, ops, states, out, lse)


def _core_bwd(cfg, blocks, res, cts):
    q, k, v, scale, ops, states, out, lse = res
    do, dlse = cts
    do = do.astype(q.dtype)
    # di_i = sum_d dO_i O_i; an lse cotangent adds p_ij * dlse_i to ds_ij: fold it into di.
    di = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    di = di - dlse[..., None].astype(jnp.float32)
    lse_b = jnp.where(jnp.isfinite(lse), lse, 0.0)
    dk, dv = flash_backward_dkv(cfg, q, k, v, do, lse_b, di, scale, ops, states[1], *blocks[1])
    dq = flash_backward_dq(cfg, q, k, v, do, lse_b, di, scale, ops, states[2], *blocks[2])
    # logits are linear in the scale: dL/ds_h = sum(q * dq)_h / s_h.
    qd = jnp.sum(q.astype(jnp.float32) * dq.astype(jnp.float32), axis=(0, 2, 3))
    dscale = jnp.where(scale != 0, qd / jnp.where(scale != 0, scale, 1.0), 0.0)
    return dq, dk, dv, dscale.astype(scale.dtype), None, None


flash_attention_core.defvjp(_core_fwd, _core_bwd)

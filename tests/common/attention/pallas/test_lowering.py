"""The kernels lower for the real targets (no accelerator needed): ``jax.export`` for ``tpu``
runs the Pallas -> Mosaic TPU lowering of all three kernels, for ``cuda`` the Mosaic GPU
lowering (TMA, barriers, wgmma, register layouts). Compilation by libtpu / ptxas and running
need the hardware; ``tools/bench_attention.py --device-check`` does that on a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from common.attention.masks import Mask, PineMask
from common.attention.pallas import BlockSizes, flash_attention, interpret_mode
from common.attention.pallas.api import gpu_flash_attention

B, S, H, KVH = 1, 256, 4, 2


def _sds(d, heads):
    return jax.ShapeDtypeStruct((B, S, heads, d), jnp.bfloat16)


def _masks():
    doc = np.zeros((B, S), np.int32)
    doc[:, 16:96], doc[:, 96:200] = 1, 2
    seg = (np.arange(S)[None] >= 100).astype(np.int32)
    return {
        "causal_padding": Mask(causal=True, kv_valid=jnp.arange(S)[None] < 200),
        "segments": Mask(causal=True, q_segment_ids=jnp.asarray(seg),
                         kv_segment_ids=jnp.asarray(seg)),
        "pine": PineMask(causal=True, doc_ids=jnp.asarray(doc)),
        "dense_heads": Mask(dense=jnp.tril(jnp.ones((1, H, S, S), bool))),
    }


@pytest.mark.parametrize("name", ["causal_padding", "pine", "segments", "dense_heads"])
def test_tpu_kernels_lower_to_mosaic(name):
    mask = _masks()[name]

    def fwd_bwd(q, k, v):
        f = lambda q, k, v: flash_attention(  # noqa: E731
            q, k, v, mask=mask, softcap=30.0 if name == "segments" else None,
            block_sizes=BlockSizes(128, 128))
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(out)

    with interpret_mode(False):
        exp = export.export(jax.jit(fwd_bwd), platforms=("tpu",))(
            _sds(128, H), _sds(128, KVH), _sds(128, KVH))
    text = exp.mlir_module()
    assert text.count("tpu_custom_call") >= 3  # forward, dk/dv, dq kernels


def test_tpu_act_kernel_lowers():
    sinks = jax.ShapeDtypeStruct((B, H, S), jnp.bool_)

    def f(q, k, v, sinks):
        return flash_attention(q, k, v, mask=Mask(causal=True), act_sinks=sinks, act_beta=0.4,
                               block_sizes=BlockSizes(128, 128))

    with interpret_mode(False):
        exp = export.export(jax.jit(f), platforms=("tpu",))(
            _sds(64, H), _sds(64, KVH), _sds(64, KVH), sinks)
    assert "tpu_custom_call" in exp.mlir_module()


@pytest.mark.parametrize("d", [64, 128])
def test_gpu_kernel_lowers_to_mosaic_gpu(d):
    def fwd_bwd(q, k, v):
        f = lambda q, k, v: gpu_flash_attention(  # noqa: E731
            q, k, v, causal=True, scale=jnp.full((H,), d**-0.5))
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(out)

    exp = export.export(jax.jit(fwd_bwd), platforms=("cuda",))(
        _sds(d, H), _sds(d, KVH), _sds(d, KVH))
    assert "mosaic_gpu" in exp.mlir_module()

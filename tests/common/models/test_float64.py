"""float64 models: every computation stays float64 (ModelConfig(dtype="float64") under 64-bit
JAX). Llama against a brute-force float64 numpy forward (HF's Llama keeps RMSNorm and RoPE in
float32 even in a float64 model; the numpy reference is itself checked against HF in float32),
GPT-2 against Hugging Face transformers in torch float64, on the same weights."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.models import DecoderLM, ModelConfig
from common.models.pretrained import build_model
from tests.common.models.hf_reference import hf_arch, hf_logits, tiny_hf_model
from tests.common.models.numpy_llama import llama_logits

# float64 rounding over two layers of sums of ~100 terms: ~1e-15 of logits of order 1. A float32
# step anywhere in the forward (a RoPE angle, a norm, a softmax) shows as ~1e-7.
ATOL = 1e-12


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _hf64(arch):
    return tiny_hf_model(arch).double()


def _ours64(arch, hf, backend):
    tensors = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
    assert all(t.dtype == np.float64 for t in tensors.values())
    ckpt = types.SimpleNamespace(arch=hf_arch(arch), config=hf.config.to_dict(), tensors=tensors,
                                 source=f"tiny-{arch}-f64")
    return build_model(ckpt, dtype="float64", attn_backend=backend)


def _hf_logits64(hf, ids):
    import torch

    with torch.no_grad():
        return hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _numpy_ref(hf, ids):
    sd = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
    return llama_logits(sd, hf.config.to_dict(), ids)


def test_numpy_reference_equals_transformers_float32():
    """The brute-force reference is the HF Llama (GQA, untied): equal in float32 to 1e-5."""
    hf = tiny_hf_model("llama")
    ids = np.random.default_rng(0).integers(0, 97, size=(1, 9))
    np.testing.assert_allclose(_numpy_ref(hf, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend,seq", [("reference", 23), ("auto", 23), ("auto", 140)])
def test_float64_llama_equals_brute_force_float64(backend, seq):
    """Tiny Llama with GQA (4 query heads on 2 KV heads): float64 logits equal the float64
    numpy loop to 1e-12 (``auto`` at 140 tokens takes the CPU backend's chunked causal path)."""
    hf = _hf64("llama")
    model = _ours64("llama", hf, backend)
    assert model.blocks.attn.q_kernel[...].dtype == jnp.float64
    ids = np.random.default_rng(1).integers(0, 97, size=(1, seq))
    ours = model.forward(jnp.asarray(ids))[0]
    assert ours.dtype == jnp.float64
    ref = _numpy_ref(hf, ids)
    assert np.abs(ref).max() > 0.1  # not a vacuous comparison
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL, rtol=0)


def test_float64_gpt2_equals_transformers_float64():
    """LayerNorm, learned positions, biases, GELU: HF's GPT-2 in torch float64."""
    hf = _hf64("gpt2")
    model = _ours64("gpt2", hf, "reference")
    ids = np.random.default_rng(2).integers(0, 97, size=(2, 19))
    np.testing.assert_allclose(np.asarray(model.forward(jnp.asarray(ids))[0]),
                               _hf_logits64(hf, ids), atol=ATOL, rtol=0)


def test_xla_backend_refuses_float64():
    """jax.nn.dot_product_attention computes its softmax in float32: named, it refuses."""
    from common.attention import BackendUnsupported, dot_product_attention

    q = jnp.ones((1, 3, 2, 4), jnp.float64)
    with pytest.raises(BackendUnsupported, match="float64"):
        dot_product_attention(q, q, q, backend="xla")


@pytest.mark.parametrize("per_layer", [True, False], ids=["per_layer", "stacked"])
def test_float64_cached_decode_equals_full_forward(per_layer):
    """Cached decoding in float64, with the decode loop's per-layer cache and with the stacked
    one (its write indexes with int32 zeros beside the int32 position: one index type)."""
    from common.models import layer_stack
    from common.models.decoder import init_cache

    hf = _hf64("llama")
    model = _ours64("llama", hf, "auto")
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 97, size=(1, 12)))
    full = model.forward(ids)[0]
    cache = init_cache(model.config, 1, 16, per_layer=per_layer)
    k = cache.layers[0].k if per_layer else cache.layers.k
    assert k.dtype == jnp.float64
    layers = layer_stack.unstack(model.blocks) if per_layer else None
    first, cache = model.forward(ids[:, :8], cache=cache, per_layer=layers)
    steps = [first]
    for t in range(8, 12):
        out, cache = model.forward(ids[:, t:t + 1], cache=cache, per_layer=layers)
        steps.append(out)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, axis=1)), np.asarray(full),
                               atol=ATOL, rtol=0)


def test_float64_needs_x64():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r'dtype="float64" needs 64-bit JAX.*jax_enable_x64'):
            ModelConfig(dtype="float64")
    cfg = ModelConfig(dtype="float64")  # made under x64, then used without it
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="needs 64-bit JAX"):
            DecoderLM(cfg, rngs=nnx.Rngs(0))


def test_unknown_dtype():
    with pytest.raises(ValueError, match="ModelConfig.dtype must be one of"):
        ModelConfig(dtype="float16")

"""Our decoders against tiny randomly initialised transformers models on the same weights."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from common.models.pretrained import build_model
from tests.common.models.hf_reference import hf_arch, hf_logits, state_dict_numpy, tiny_hf_model

ARCHS = ["llama", "llama_tied", "llama3_scaled", "qwen2", "gpt2", "neox"]


def _ours(arch, hf, **kw):
    ckpt = types.SimpleNamespace(arch=hf_arch(arch), config=hf.config.to_dict(),
                                 tensors=state_dict_numpy(hf), source=f"tiny-{arch}")
    return build_model(ckpt, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch):
    hf = tiny_hf_model(arch)
    model = _ours(arch, hf)
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 23))
    ours = np.asarray(model(jnp.asarray(ids)))
    ref = hf_logits(hf, ids)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "xla"])
def test_backends_agree_with_transformers(backend):
    hf = tiny_hf_model("llama")
    model = _ours("llama", hf, attn_backend=backend)
    ids = np.random.default_rng(2).integers(0, 97, size=(1, 17))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_logits(hf, ids),
                               atol=1e-5, rtol=0)


def test_wrong_shape_names_tensor():
    from common.models.convert import WeightShapeError

    hf = tiny_hf_model("llama")
    tensors = state_dict_numpy(hf)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :10]
    ckpt = types.SimpleNamespace(arch="llama", config=hf.config.to_dict(), tensors=tensors,
                                 source="bad.safetensors")
    with pytest.raises(WeightShapeError, match=r"bad.safetensors.*model.layers.1.mlp.up_proj.weight"):
        build_model(ckpt)


def test_missing_tensor_named():
    from common.models.convert import WeightShapeError

    hf = tiny_hf_model("gpt2")
    tensors = state_dict_numpy(hf)
    del tensors["transformer.h.0.ln_2.bias"]
    ckpt = types.SimpleNamespace(arch="gpt2", config=hf.config.to_dict(), tensors=tensors,
                                 source="x")
    with pytest.raises(WeightShapeError, match="transformer.h.0.ln_2.bias"):
        build_model(ckpt)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'mamba'"):
        from common.models.config import config_from_hf

        config_from_hf("mamba", {})

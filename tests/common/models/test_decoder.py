"""Decoder behaviour: KV-cache consistency, generation, dtypes, config validation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.models import DecoderLM, ModelConfig, init_cache
from common.models.generation import generate

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_mlp=48)


@pytest.fixture(scope="module", params=["llama", "gpt2", "neox"])
def model(request):
    arch = request.param
    extra = {"llama": dict(n_kv_heads=2), "gpt2": dict(norm="layer", act="gelu_tanh",
             gated_mlp=False, pos="learned", qkv_bias=True, o_bias=True, mlp_bias=True,
             max_position=64, tie_embeddings=True),
             "neox": dict(norm="layer", act="gelu", gated_mlp=False, rotary_dim=2,
                          parallel_residual=True, qkv_bias=True, o_bias=True, mlp_bias=True)}[arch]
    return DecoderLM(ModelConfig(arch=arch, **TINY, **extra), rngs=nnx.Rngs(1))


@nnx.jit
def _logits(model, ids):
    return model(ids)


def _argmax_decode(model, prompt, n):
    """Uncached greedy decoding: a full forward per token (right-padded to one fixed length,
    which causal attention makes invisible to the positions read)."""
    seq = list(prompt)
    width = 16
    for _ in range(n):
        ids = np.zeros((1, width), np.int32)
        ids[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(_logits(model, jnp.asarray(ids))[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_cached_prefill_then_decode_equals_full_forward(model):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 61, size=(2, 9)))
    cache = init_cache(model.config, 2, 16)
    a, cache = model.forward(ids[:, :6], cache=cache)
    b, cache = model.forward(ids[:, 6:8], cache=cache)
    c, cache = model.forward(ids[:, 8:], cache=cache)
    np.testing.assert_allclose(np.concatenate([a, b, c], axis=1), _logits(model, ids), atol=2e-5)
    assert int(cache.length) == 9


def test_greedy_generation_equals_uncached_argmax(model):
    prompts = [[3, 14, 15, 9, 2], [6, 5], [35, 8, 9]]  # different lengths: left padding
    out = generate(model, prompts, 8, eos_token_id=[])
    for p, o in zip(prompts, out, strict=True):
        assert o == _argmax_decode(model, p, 8)


def test_sampling_is_seeded_and_valid(model):
    a = generate(model, [[1, 2, 3]], 6, temperature=1.0, seed=3, eos_token_id=[])[0]
    b = generate(model, [[1, 2, 3]], 6, temperature=1.0, seed=3, eos_token_id=[])[0]
    c = generate(model, [[1, 2, 3]], 6, temperature=1.0, top_k=1, seed=4, eos_token_id=[])[0]
    assert a == b and len(a) == 6 and all(0 <= t < 61 for t in a)
    assert c == _argmax_decode(model, [1, 2, 3], 6)  # top-1 sampling is greedy


def test_eos_stops_generation(model):
    first = generate(model, [[1, 2, 3]], 5, eos_token_id=[])[0]
    out = generate(model, [[1, 2, 3]], 5, eos_token_id=first[1])[0]
    assert out == first[: first.index(first[1]) + 1]


def test_bfloat16_close_to_float32():
    cfg = ModelConfig(arch="llama", **TINY)
    m32 = DecoderLM(cfg, rngs=nnx.Rngs(0))
    m16 = DecoderLM(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    ids = jnp.arange(10)[None]
    l32, l16 = m32(ids), m16(ids)
    assert l16.dtype == jnp.float32
    # bf16 has 8 mantissa bits: relative error of a few 1e-3 per op.
    assert float(jnp.abs(l32 - l16).max()) < 5e-2 * float(jnp.abs(l32).max())


@pytest.mark.parametrize("bad,msg", [
    (dict(arch="mamba"), "unknown architecture 'mamba'"),
    (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
    (dict(n_layers=0), "n_layers must be >= 1"),
    (dict(norm="batch"), "norm must be"),
])
def test_config_errors(bad, msg):
    kw = dict(TINY, **bad)
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


def test_bad_input_shape():
    m = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        m(jnp.arange(5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [[1]], 0)

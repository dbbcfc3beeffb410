"""A tiny random Llama (4 query heads on 2 KV heads) for the PINE tests."""

from __future__ import annotations

import jax
from flax import nnx

from common.models import DecoderLM, ModelConfig

VOCAB = 61


def tiny_model(seed: int = 0, n_layers: int = 2, scale: float = 6.0,
               vocab: int = VOCAB, dtype: str = "float32") -> DecoderLM:
    """Random weights ``scale`` times the default init (attention far from uniform, so
    position and order effects are large); RoPE base 100 so positions matter. ``dtype=
    "float64"`` needs 64-bit JAX (``with jax.enable_x64(True):``)."""
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                      d_head=8, d_mlp=48, rope_theta=100.0, tie_embeddings=True,
                      attn_backend="reference", dtype=dtype)
    model = DecoderLM(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: a * scale if a.ndim >= 2 else a, state))
    return model


class ByteTokenizer:
    """Every character is one token (its code point modulo 128): enough for the run's prompts."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 128 for c in text]

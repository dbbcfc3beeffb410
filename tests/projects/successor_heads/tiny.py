"""Tiny Llama-architecture models built from Hugging Face-named numpy tensors, and a toy
tokenizer: the test fixtures of the successor-heads project.

Weights are planted by their Hugging Face names (``model.layers.1.self_attn.v_proj.weight``),
so the fixtures do not depend on how headlab lays out its parameters; the same tensors can
build a transformers model for cross-checks.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from common.models import DecoderLM, ModelConfig
from common.models.convert import assign_weights

WORDS = (["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
         + ["one", "two", "three", "four", "five"] + ["Jan", "Feb", "Mar"])
CHARS = [chr(c) for c in range(32, 127)]


class ToyTokenizer:
    """Whole words of ``words`` (with a leading space) are single tokens; anything else is
    spelled one character per token. ``encode`` / ``decode`` as the headlab Tokenizer."""

    def __init__(self, words=WORDS):
        self.vocab = [" " + w for w in words] + CHARS
        self.ids = {t: i for i, t in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        if text in self.ids and len(text) > 1:
            return [self.ids[text]]
        return [self.ids[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self.vocab)


def tiny_config(vocab: int, **kw) -> ModelConfig:
    """4 query heads on 2 KV heads (group 2), RMSNorm, SwiGLU, tied embeddings."""
    base = dict(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=16,
                d_mlp=48, rope_theta=100.0, tie_embeddings=True)
    base.update(kw)
    return ModelConfig(**base)


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face Llama tensors with random values; norm scales positive (0.5 .. 1.5)."""
    rng = np.random.default_rng(seed)
    d, H, K, D, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    pos = lambda *s: rng.uniform(0.5, 1.5, s).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": n(cfg.vocab_size, d), "model.norm.weight": pos(d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = pos(d)
        t[p + "post_attention_layernorm.weight"] = pos(d)
        t[p + "self_attn.q_proj.weight"] = n(H * D, d) / np.sqrt(d)
        t[p + "self_attn.k_proj.weight"] = n(K * D, d) / np.sqrt(d)
        t[p + "self_attn.v_proj.weight"] = n(K * D, d) / np.sqrt(d)
        t[p + "self_attn.o_proj.weight"] = n(d, H * D) / np.sqrt(H * D)
        t[p + "mlp.gate_proj.weight"] = n(F, d) / np.sqrt(d)
        t[p + "mlp.up_proj.weight"] = n(F, d) / np.sqrt(d)
        t[p + "mlp.down_proj.weight"] = n(d, F) / np.sqrt(F)
    return {k: v.astype(np.float32) for k, v in t.items()}


def build(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> DecoderLM:
    """A headlab model holding ``tensors`` (copied; the dict is left intact)."""
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    assign_weights(model, dict(tensors), source="tiny test tensors", pop=False)
    return model


def w_v(tensors, cfg, layer: int, kv_head: int) -> np.ndarray:
    """``[d_model, d_head]`` value map of a KV head, read from the HF tensor."""
    D = cfg.d_head
    return tensors[f"model.layers.{layer}.self_attn.v_proj.weight"][kv_head * D:(kv_head + 1) * D].T


def w_o(tensors, cfg, layer: int, head: int) -> np.ndarray:
    """``[d_head, d_model]`` output map of a query head, read from the HF tensor."""
    D = cfg.d_head
    return tensors[f"model.layers.{layer}.self_attn.o_proj.weight"][:, head * D:(head + 1) * D].T


def set_v(tensors, cfg, layer: int, kv_head: int, wv: np.ndarray) -> None:
    D = cfg.d_head
    tensors[f"model.layers.{layer}.self_attn.v_proj.weight"][kv_head * D:(kv_head + 1) * D] = wv.T


def set_o(tensors, cfg, layer: int, head: int, wo: np.ndarray) -> None:
    D = cfg.d_head
    tensors[f"model.layers.{layer}.self_attn.o_proj.weight"][:, head * D:(head + 1) * D] = wo.T

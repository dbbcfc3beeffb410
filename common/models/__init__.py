"""Decoder LMs built from the per-head attention core, generation, and pretrained loading."""

from common.attention.hooks import resolve_hooks
from common.models.config import ARCHS, ModelConfig, config_from_hf
from common.models.decoder import Block, DecoderLM, KVCache, init_cache

__all__ = [
    "ARCHS",
    "Block",
    "DecoderLM",
    "KVCache",
    "ModelConfig",
    "config_from_hf",
    "generate",
    "init_cache",
    "load_pretrained",
    "resolve_hooks",
]


def __getattr__(name):  # lazy: loading pulls in the weight readers and tokenizers
    if name == "load_pretrained":
        from common.models.pretrained import load_pretrained

        return load_pretrained
    if name == "generate":
        from common.models.generation import generate

        return generate
    raise AttributeError(name)

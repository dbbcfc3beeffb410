"""The per-head attention core: masks, RoPE, backends, and the NNX attention layer."""

from common.attention.backends import BACKENDS, BackendUnsupported, reference_attention
from common.attention.core import AttentionOutput, dot_product_attention, head_scale
from common.attention.hooks import NO_HOOKS, SITES, AttentionEdit, Hooks
from common.attention.layer import LayerKV, MultiHeadAttention
from common.attention.masks import Mask, causal_mask, padding_mask
from common.attention.rope import RoPE

__all__ = [
    "BACKENDS",
    "NO_HOOKS",
    "SITES",
    "AttentionEdit",
    "AttentionOutput",
    "BackendUnsupported",
    "Hooks",
    "LayerKV",
    "Mask",
    "MultiHeadAttention",
    "RoPE",
    "causal_mask",
    "dot_product_attention",
    "head_scale",
    "padding_mask",
    "reference_attention",
]

"""Load a llama.cpp GGUF file: metadata -> Hugging Face config, dequantised tensors, tokenizer.

The header is parsed by :mod:`common.weights.gguf_reader`; tensors are dequantised one at a
time with the ``gguf`` package (peak memory: the float checkpoint plus one tensor). GGUF names
(``blk.3.attn_q.weight``) become Hugging Face names (``model.layers.3.self_attn.q_proj.weight``)
in the same torch ``[out, in]`` layout.

llama.cpp's converter reorders the rows of Llama's Q and K projections, within each head, from
the rotate-half RoPE layout of Hugging Face (the first half of a head's rows pairs with the
second half) to the interleaved layout its kernels use (rows 2j and 2j+1 pair). We undo that
here, so the rotate-half RoPE and the Hugging Face names apply exactly. Qwen2 files are not
permuted by the converter (llama.cpp runs Qwen2 with NeoX-style, i.e. rotate-half, RoPE).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.weights.errors import WeightsError
from common.weights.gguf_reader import dequantize, read_header
from common.weights.loaded_checkpoint import Checkpoint, check_tensors, normalise_config
from common.weights.tokenizer import Tokenizer

# GGUF ``general.architecture`` -> (Hugging Face model_type, Q/K rows permuted by llama.cpp).
_ARCHS = {"llama": ("llama", True), "qwen2": ("qwen2", False)}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_down.bias": "mlp.down_proj.bias",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")

_MISSING = object()


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of Q or K rows: GGUF layout -> Hugging Face layout.

    Args:
      w: ``[n_heads * head_dim, ...]`` (a weight ``[rows, d_model]`` or a bias ``[rows]``)
        whose rows, within each head, are ordered ``(x_0, x_half, x_1, x_half+1, ...)``.
      n_heads: number of heads in ``w`` (query heads for Q, key/value heads for K).

    Returns:
      ``w`` with each head's rows ordered ``(x_0, x_1, ..., x_half-1, x_half, ...)``, the
      rotate-half layout: row ``s * half + j`` of a head is GGUF row ``2 j + s``.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(metadata: Mapping[str, Any], tensor_names: set[str], path: Any) -> dict:
    """Hugging Face ``config.json`` keys from GGUF metadata (Llama-family files)."""
    try:
        return _gguf_config(metadata, tensor_names, path)
    except (TypeError, ValueError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{path}: malformed GGUF metadata ({type(e).__name__}: {e})") from None


def _gguf_config(metadata: Mapping[str, Any], tensor_names: set[str], path: Any) -> dict:
    arch = metadata.get("general.architecture")
    if arch not in _ARCHS:
        raise WeightsError(
            f"{path}: unknown architecture general.architecture={arch!r}; supported GGUF "
            f"architectures: {', '.join(sorted(_ARCHS))}"
        )
    model_type, _ = _ARCHS[arch]
    name = str(metadata.get("general.name", "")).lower()
    if arch == "llama" and "mistral" in name:
        model_type = "mistral"

    def get(key, default=_MISSING):
        value = metadata.get(f"{arch}.{key}", default)
        if value is _MISSING:
            raise WeightsError(f"{path}: missing GGUF metadata {arch}.{key}")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    rotary = int(get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise WeightsError(f"{path}: {arch}.rope.dimension_count={rotary} differs from the head "
                           f"size {head_dim}; partial rotary is not supported for {arch}")
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise WeightsError(f"{path}: RoPE scaling ({scaling!r}, rope_freqs) is not supported")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    config = {
        "model_type": model_type,
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}[model_type]],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": int(vocab) if vocab is not None else None,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensor_names
    for key, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                        ("padding_token_id", "pad_token_id")):
        value = metadata.get(f"tokenizer.ggml.{key}")
        if value is not None:
            config[hf_key] = int(value)
    if config["vocab_size"] is None:
        raise WeightsError(f"{path}: no {arch}.vocab_size and no tokenizer.ggml.tokens metadata")
    return config


def hf_name(gguf_name: str, path: Any) -> str:
    """Hugging Face name of a Llama-family GGUF tensor (``blk.0.attn_q.weight`` -> ...)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise WeightsError(f"{path}: unexpected GGUF tensor {gguf_name!r} for a Llama-family model")


def load_gguf(path: str | os.PathLike, dtype=np.float32) -> Checkpoint:
    """Load a llama.cpp GGUF file (Llama, Mistral, Qwen2, SmolLM2) with its tokenizer.

    Args:
      path: the ``.gguf`` file.
      dtype: dtype of the returned tensors (dequantisation itself is float32).

    Returns:
      A :class:`Checkpoint` with ``arch="llama"``, Hugging Face names and torch layouts,
      Q/K rows in the Hugging Face (rotate-half) order, and the tokenizer built from the
      ``tokenizer.ggml.*`` metadata (``None`` if the file has none).

    Raises:
      WeightsError: not a GGUF file, corrupt or truncated, unknown architecture, tensors that
        do not fit the metadata.
    """
    path = pathlib.Path(path).expanduser()
    header, buf = read_header(path)
    meta = header.metadata
    names = {t.name for t in header.tensors}
    config = gguf_config(meta, names, path)
    _, permuted = _ARCHS[meta["general.architecture"]]
    config = normalise_config(config, "llama")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors: dict[str, np.ndarray] = {}
    for info in header.tensors:
        name = hf_name(info.name, path)
        try:
            w = dequantize(buf, info)
        except Exception as e:
            raise WeightsError(f"{path}: cannot dequantise tensor {info.name!r} of ggml type "
                               f"{info.ggml_type} ({type(e).__name__}: {e})") from None
        if permuted and info.name.split(".")[-2] in ("attn_q", "attn_k"):
            n = heads if ".attn_q." in info.name else kv_heads
            try:
                w = unpermute_qk(w, n)
            except ValueError as e:
                raise WeightsError(f"{path}: tensor {info.name!r} {info.shape} does not fit "
                                   f"{n} heads ({e})") from None
        tensors[name] = np.array(w, dtype=dtype)  # a copy: nothing keeps the file mapped
        del w
    tensors = check_tensors(tensors, "llama", config, f"{path} (metadata vs tensors)")
    tokenizer = None
    if "tokenizer.ggml.model" in meta:
        tokenizer = Tokenizer.from_gguf_metadata(meta, source=path)
    return Checkpoint(arch="llama", config=config, tensors=tensors, tokenizer=tokenizer,
                      source=path)

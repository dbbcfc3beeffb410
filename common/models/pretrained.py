"""``load_pretrained``: a model name, a ``.gguf`` file or a Hugging Face folder -> (model, tokenizer)."""

from __future__ import annotations

import os
import pathlib

from flax import nnx

from common.models.compile_cache import enable as enable_compilation_cache
from common.models.config import config_from_hf
from common.models.convert import assign_weights
from common.models.decoder import DecoderLM

KNOWN_MODELS = ("smollm2-135m-instruct",)


def build_model(checkpoint, *, dtype: str = "float32", attn_backend: str = "auto") -> DecoderLM:
    """A :class:`DecoderLM` holding a loaded ``common.weights.Checkpoint``'s tensors.

    The model is built abstractly (no random init) and filled tensor by tensor; the
    checkpoint's numpy tensors are released as they are copied.
    """
    cfg = config_from_hf(checkpoint.arch, checkpoint.config, dtype=dtype, attn_backend=attn_backend)
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    assign_weights(model, checkpoint.tensors, source=str(checkpoint.source))
    return model


def load_pretrained(
    name_or_path: str | os.PathLike = "smollm2-135m-instruct",
    *,
    dtype: str = "float32",
    attn_backend: str = "auto",
    require_tokenizer: bool = True,
):
    """Load a pretrained decoder LM and its tokenizer, offline.

    Args:
      name_or_path: ``"smollm2-135m-instruct"`` (fetched once into the cache by
        ``python -m tools.fetch_model``), a path to a ``.gguf`` file, or a Hugging Face folder
        (``config.json`` + ``*.safetensors`` + ``tokenizer.json``).
      dtype: ``float32`` or ``bfloat16`` compute.
      attn_backend: attention backend for every layer.

    Loading turns on JAX's persistent compilation cache (``~/.cache/headlab/jax``; opt out
    with ``HEADLAB_COMPILATION_CACHE=0``; see :mod:`common.models.compile_cache`).

    Returns:
      ``(model, tokenizer)``.
    """
    from common import weights

    enable_compilation_cache()

    name = str(name_or_path)
    if name in KNOWN_MODELS:
        path = weights.default_model_path(name)
    else:
        path = pathlib.Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"load_pretrained: {name!r} is neither a known model name {KNOWN_MODELS} nor an "
                "existing .gguf file or Hugging Face folder"
            )
    ckpt = weights.load_checkpoint(path)
    tokenizer = ckpt.tokenizer
    if tokenizer is None and require_tokenizer:
        raise weights.WeightsError(f"{path}: no tokenizer found (expected tokenizer.json or GGUF "
                                   "tokenizer metadata)")
    model = build_model(ckpt, dtype=dtype, attn_backend=attn_backend)
    return model, tokenizer

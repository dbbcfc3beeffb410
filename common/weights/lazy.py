"""Open a checkpoint without reading its tensors: shapes now, values (or slices) on demand.

:func:`open_checkpoint` returns a :class:`~common.weights.Checkpoint` whose ``tensors`` are
:class:`LazyTensor` handles. For safetensors (one file or a sharded index) a handle maps only
its own bytes when read, and indexing a transformed view reads only the rows asked for, so a
loader that copies each device's slice (``jax.make_array_from_callback``) keeps host memory near
one device's share of the model, not the whole model. Each read opens and closes its own
memory map, so pages touched by one read leave the process's resident set when it is done.

GGUF tensors are quantised in blocks along their rows; a handle dequantises its whole tensor
when read (peak: one float32 tensor, through a map of the file closed after the read), then the
caller slices it.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
from collections.abc import Callable

import numpy as np

from common.weights.errors import WeightsError
from common.weights.loaded_checkpoint import Checkpoint, arch_of, check_tensors, normalise_config


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """One stored tensor, read when asked.

    Attributes:
      shape: torch-layout shape (as the Hugging Face module stores it).
      dtype: the stored dtype (numpy; bfloat16 via ``ml_dtypes``); GGUF handles report float32.
      reader: ``() -> array`` of ``shape``: a read-only memory-mapped view (safetensors) or a
        fresh float32 array (GGUF). Slicing the view before copying reads only that slice.
      name: the name in the file (for messages).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    reader: Callable[[], np.ndarray]
    name: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def read(self) -> np.ndarray:
        """The tensor (a memory-mapped view where the format allows)."""
        return self.reader()

    def __array__(self, dtype=None, copy=None):  # noqa: ARG002 - numpy protocol
        a = np.array(self.reader())
        return a if dtype is None else a.astype(dtype)


def _safetensors_handles(path: pathlib.Path, names: set[str] | None = None
                         ) -> dict[str, LazyTensor]:
    from common.weights.safetensors_file import tensor_entries

    out: dict[str, LazyTensor] = {}
    for e in tensor_entries(path, names):
        def reader(path=path, offset=e.offset, stored=e.dtype, shape=e.shape):
            if not shape or 0 in shape:
                return np.zeros(shape, stored)
            # A map of this tensor alone, released with the last view of it.
            return np.memmap(path, dtype=stored, mode="r", offset=offset, shape=shape)

        out[e.name] = LazyTensor(e.shape, e.dtype, reader, e.name)
    return out


def _hf_handles(folder: pathlib.Path) -> dict[str, LazyTensor]:
    from common.weights.hf_folder import read_folder_tensors

    return read_folder_tensors(folder, _safetensors_handles)


def _gguf_checkpoint(path: pathlib.Path) -> Checkpoint:
    from common.weights.gguf_file import _ARCHS, gguf_config, hf_name, unpermute_qk
    from common.weights.gguf_reader import dequantize, read_header
    from common.weights.tokenizer import Tokenizer

    header, _ = read_header(path)  # its map is used for the header only
    meta = header.metadata
    config = normalise_config(gguf_config(meta, {t.name for t in header.tensors}, path), "llama")
    _, permuted = _ARCHS[meta["general.architecture"]]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    handles: dict[str, LazyTensor] = {}
    for info in header.tensors:
        def reader(info=info):
            # A map of the file for this tensor alone, closed once it is dequantised (a copy),
            # so its pages leave the resident set.
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                w = dequantize(m, info)
                w = np.array(w, dtype=np.float32)  # owns its memory: the map can close
            if permuted and info.name.split(".")[-2] in ("attn_q", "attn_k"):
                w = unpermute_qk(w, heads if ".attn_q." in info.name else kv_heads)
            return w

        handles[hf_name(info.name, path)] = LazyTensor(tuple(info.shape), np.dtype(np.float32),
                                                       reader, info.name)
    tensors = check_tensors(handles, "llama", config, f"{path} (metadata vs tensors)")
    tok = Tokenizer.from_gguf_metadata(meta, source=path) if "tokenizer.ggml.model" in meta else None
    return Checkpoint(arch="llama", config=config, tensors=tensors, tokenizer=tok, source=path)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A :class:`Checkpoint` of :class:`LazyTensor` handles for a Hugging Face folder (safetensors,
    one file or sharded) or a ``.gguf`` file: the config, the tokenizer and every tensor's shape,
    checked against the config, with nothing read yet.

    Raises:
      WeightsError: missing or corrupt files, unknown architecture, tensors that do not fit.
    """
    from common.weights.hf_folder import read_config
    from common.weights.tokenizer import Tokenizer

    path = pathlib.Path(path).expanduser()
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise WeightsError(f"{path}: expected a .gguf file or a Hugging Face folder")
        return _gguf_checkpoint(path)
    if not path.is_dir():
        raise WeightsError(f"{path}: no such file or folder")
    config = read_config(path)
    arch = arch_of(config.get("model_type"), path / "config.json")
    config = normalise_config(config, arch)
    tensors = check_tensors(_hf_handles(path), arch, config, f"{path} (config.json vs weights)")
    tok = None
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(path / "tokenizer.json", bos_token_id=config.get("bos_token_id"),
                                  eos_token_id=config.get("eos_token_id"))
    return Checkpoint(arch=arch, config=config, tensors=tensors, tokenizer=tok, source=path)

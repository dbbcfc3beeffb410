"""Read a ``.safetensors`` file into numpy, checking its structure as we go.

Format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the byte after the
header), then the data. We read it ourselves rather than through ``safetensors.numpy`` because
numpy has no bfloat16 (most published checkpoints are bf16; ``ml_dtypes`` supplies the type) and
because each fault then gets a message naming the file, the tensor and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

from common.weights.errors import WeightsError

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 2**20


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """``(header, data_start)``: the JSON header without ``__metadata__`` and where data begins."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            raise WeightsError(
                f"{path}: corrupt or truncated safetensors file: header length {n} but the file "
                f"has {size} bytes"
            )
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: where its bytes are, checked against the file.

    ``dtype`` is the numpy dtype of the stored elements, ``stored`` the file's name for it
    (``"BF16"``), ``offset`` the absolute byte offset of its data and ``nbytes`` its length.
    """

    name: str
    dtype: np.dtype
    stored: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def tensor_entries(path: pathlib.Path, names: set[str] | None = None) -> list[TensorEntry]:
    """The tensors of one ``.safetensors`` file from its header (no data read), each checked:
    known dtype, offsets that span exactly the shape's bytes, data inside the file.

    Raises:
      WeightsError: naming the file and the tensor.
    """
    header, start = read_header(path)
    size = path.stat().st_size
    out = []
    for name, info in header.items():
        if names is not None and name not in names:
            continue
        try:
            stored = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: corrupt header entry for tensor {name!r}: {info!r} "
                               f"({type(e).__name__}: {e})") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * stored.itemsize
        if end - begin != nbytes or begin < 0:
            raise WeightsError(
                f"{path}: corrupt header: tensor {name!r} {info['dtype']}{list(shape)} needs "
                f"{nbytes} bytes but data_offsets {[begin, end]} span {end - begin}"
            )
        if start + end > size:
            raise WeightsError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {start + end} "
                f"but the file has {size} bytes"
            )
        out.append(TensorEntry(name, stored, info["dtype"], shape, start + begin, nbytes))
    return out


def read_safetensors(path: str | os.PathLike, dtype: np.dtype | None = np.float32,
                     names: set[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of one ``.safetensors`` file as numpy arrays (copies, file closed after).

    Args:
      path: the file.
      dtype: cast floating-point tensors to this dtype (``None`` keeps the stored dtype);
        integer and bool tensors are kept as stored.
      names: read only these tensors (all if ``None``).

    Raises:
      WeightsError: truncated or corrupt file, unknown dtype, offsets that do not fit the
        shape, naming the file and the tensor.
    """
    path = pathlib.Path(path)
    entries = tensor_entries(path, names)
    size = path.stat().st_size
    start = min((e.offset for e in entries), default=size)
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for e in entries:
        array = mm[e.offset:e.offset + e.nbytes].view(e.dtype).reshape(e.shape)
        is_float = e.stored in ("F64", "F32", "F16", "BF16")
        array = array.astype(dtype) if is_float and dtype is not None else np.array(array)
        out[e.name] = array
    del mm
    return out

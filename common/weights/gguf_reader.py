"""Parse a GGUF file's header: metadata key/values and tensor descriptors.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, key/value
count u64; each key/value is a string key, a u32 value type and the value (arrays: item type
u32, count u64, items); each tensor descriptor is a string name, u32 number of dims, u64 dims
(ggml order, fastest first), u32 ggml type, u64 offset from the aligned start of the data.

We parse this ourselves instead of with ``gguf.GGUFReader``, which builds a numpy view per
metadata item (about 5 s for a 49k-token vocabulary, here 0.1 s), and so that a truncated or
corrupt file is reported with the item at fault. Dequantisation stays with the ``gguf``
package (:func:`tensor_bytes` hands it the raw blocks).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.weights.errors import WeightsError

MAGIC = b"GGUF"
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.

    Attributes:
      name: GGUF name (``blk.0.attn_q.weight``).
      shape: numpy / torch order (slowest axis first: ``[out, in]`` for a matrix).
      ggml_type: ``gguf.GGMLQuantizationType`` value.
      offset: absolute byte offset of the data in the file.
      n_bytes: size of the stored (possibly quantised) data.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int


@dataclasses.dataclass
class GGUFHeader:
    path: pathlib.Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    file_size: int


class _Cursor:
    def __init__(self, buf, path: pathlib.Path, size: int):
        self.buf, self.path, self.size, self.pos = buf, path, size, 0
        self.what = "the header"

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise WeightsError(
                f"{self.path}: corrupt or truncated GGUF file ({self.size} bytes): {self.what} "
                f"needs bytes {self.pos}..{self.pos + n} past the end of the file"
            )

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALAR and item != 7:
                dtype = np.dtype(_SCALAR[item])
                self.need(count * dtype.itemsize)
                out = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * dtype.itemsize
                return out
            if count > self.size:  # each item takes at least one byte
                self.need(count)
            return [self.value(item) for _ in range(count)]
        raise WeightsError(f"{self.path}: corrupt GGUF file: {self.what} has unknown value "
                           f"type {kind} at byte {self.pos}")


def read_header(path: str | os.PathLike) -> tuple[GGUFHeader, mmap.mmap]:
    """Parse ``path``'s header; returns it with the open memory map of the file.

    Raises:
      WeightsError: not a GGUF file, unsupported version, corrupt or truncated header, tensor
        data past the end of the file, unknown tensor type.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != MAGIC:
            what = "empty file" if size == 0 else f"magic {magic!r}"
            raise WeightsError(f"{path}: not a GGUF file ({what}; expected {MAGIC!r})")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(buf, path, size)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise WeightsError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        cur.what = f"metadata entry {i} of {n_kv}"
        key = cur.string()
        cur.what = f"metadata {key!r}"
        metadata[key] = cur.value(cur.unpack("<I"))
    raw_tensors = []
    for i in range(n_tensors):
        cur.what = f"tensor descriptor {i} of {n_tensors}"
        name = cur.string()
        cur.what = f"tensor descriptor {name!r}"
        n_dims = cur.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise WeightsError(f"{path}: corrupt GGUF file: tensor {name!r} has {n_dims} dims")
        dims = [cur.unpack("<Q") for _ in range(n_dims)]
        raw_tensors.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise WeightsError(f"{path}: corrupt GGUF file: general.alignment={align!r}")
    data_start = -(-cur.pos // align) * align
    tensors = []
    for name, dims, kind, offset in raw_tensors:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise WeightsError(f"{path}: tensor {name!r} has unknown ggml type {kind}") from None
        n = int(np.prod(dims, dtype=np.int64))
        if dims and dims[0] % block:
            raise WeightsError(f"{path}: corrupt GGUF file: tensor {name!r} rows of {dims[0]} "
                               f"do not split into blocks of {block}")
        n_bytes = n // block * type_size
        start = data_start + offset
        if start + n_bytes > size:
            raise WeightsError(
                f"{path}: truncated GGUF file: tensor {name!r} needs bytes up to "
                f"{start + n_bytes} but the file has {size} bytes"
            )
        tensors.append(TensorInfo(name, tuple(int(d) for d in reversed(dims)), kind, start,
                                  n_bytes))
    return GGUFHeader(path, version, metadata, tensors, size), buf


def dequantize(buf: mmap.mmap, info: TensorInfo) -> np.ndarray:
    """The tensor's float32 values in ``info.shape``, dequantised by the ``gguf`` package."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize

    kind = GGMLQuantizationType(info.ggml_type)
    block, type_size = GGML_QUANT_SIZES[kind]
    shape = info.shape or (1,)
    row_bytes = shape[-1] // block * type_size
    raw = np.frombuffer(buf, np.uint8, info.n_bytes, info.offset).reshape(*shape[:-1], row_bytes)
    values = dequantize(raw, kind)
    return values.reshape(info.shape)


def reader_field_value(field: Any) -> Any:
    """The value of a ``gguf.ReaderField`` (from ``GGUFReader.fields``): scalar, str or list."""
    from gguf import GGUFValueType

    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        item = field.types[-1] if len(field.types) > 1 else None
        if item == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if not field.data:
            return []
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]][0].item()


def plain_metadata(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: value}`` from either plain values or ``GGUFReader.fields``."""
    return {k: reader_field_value(v) if hasattr(v, "parts") else v for k, v in fields.items()}

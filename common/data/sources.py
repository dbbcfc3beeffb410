"""Random-access sources: generated token streams, in-memory arrays, ArrayRecord files.

A source has ``len`` and ``__getitem__`` returning one example (a dict of numpy arrays), and is
a pure function of its arguments, so every process and every restart sees the same data.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np


class InducedTokens:
    """Generated language-model data with an induction structure.

    Example ``i`` is ``[seq_len]`` int32 tokens: a random prefix of ``seq_len // 2`` tokens from
    ``[1, vocab)`` followed by a repeat of the same prefix (``0`` pads an odd length), so a model
    that learns to copy (induction heads) drives the loss on the second half toward zero.
    Deterministic in ``(seed, i)``.
    """

    def __init__(self, num_examples: int, seq_len: int, vocab_size: int, seed: int = 0):
        if vocab_size < 2 or seq_len < 2:
            raise ValueError(f"InducedTokens: need vocab_size >= 2 and seq_len >= 2, got "
                             f"{vocab_size}, {seq_len}")
        self.num_examples, self.seq_len, self.vocab_size, self.seed = (
            num_examples, seq_len, vocab_size, seed)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.num_examples:
            raise IndexError(f"InducedTokens index {i} out of range [0, {self.num_examples})")
        rng = np.random.default_rng((self.seed, int(i)))
        half = self.seq_len // 2
        prefix = rng.integers(1, self.vocab_size, half, dtype=np.int32)
        tokens = np.concatenate([prefix, prefix, np.zeros(self.seq_len % 2, np.int32)])
        return {"input_ids": tokens}


class ArraySource:
    """In-memory examples: a mapping of equal-length arrays, example ``i`` = row ``i`` of each."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource: arrays differ in length: {lengths}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}


# ArrayRecord files of dicts of numpy arrays, one record per example (``np.savez`` bytes).


def encode_example(example: Mapping[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in example.items()})
    return buf.getvalue()


def decode_example(record: bytes) -> dict[str, np.ndarray]:
    import io

    with np.load(io.BytesIO(record)) as z:
        return {k: z[k] for k in z.files}


def write_array_record(
    path: str | os.PathLike, examples: Iterable[Mapping[str, np.ndarray]]
) -> int:
    """Write examples to one ArrayRecord file (atomically: a temporary name, then rename)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    try:
        for ex in examples:
            writer.write(encode_example(ex))
            n += 1
    finally:
        writer.close()
    os.replace(tmp, path)
    return n


class ArrayRecordExamples:
    """Random access to ArrayRecord files written by :func:`write_array_record`."""

    def __init__(self, paths: str | os.PathLike | list):
        import grain

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        missing = [str(p) for p in paths if not pathlib.Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"ArrayRecord file(s) not found: {missing}")
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return decode_example(self._source[i])

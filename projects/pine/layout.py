"""A PINE prompt: a prefix, k segments tokenised separately, a suffix (papers/pine.md §2).

Notation (the paper's): prefix length ``P``, segment lengths ``L_1..L_k``, ``T = ΣL_i``,
``E = P + T``, suffix length ``S``; ``N = E + S`` tokens in sequence order (prefix, segment 1,
..., segment k, suffix). Per token:

* ``doc``: 0 prefix, ``i`` (1..k) inside segment ``i``, -1 suffix (and generated tokens);
* ``off``: the offset inside its segment (segment tokens), its sequence index otherwise;
* ``stacked``: PINE's default positions: prefix ``0..P-1``, every segment right-aligned to
  ``E`` (``E - L_i + off``), suffix ``E, E+1, ...`` (the sequence index).

Segments are tokenised separately by the caller (token boundaries never merge across
segments): this module only takes token ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from common.data.errors import DataError


class PineInputError(DataError):
    """A PINE prompt that cannot be laid out (empty or overlapping segments, no suffix, a model
    without RoPE, an unknown method); the message names the fault."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """One prompt laid out for PINE (see the module docstring). Arrays are ``[N]`` numpy."""

    ids: np.ndarray
    doc: np.ndarray
    off: np.ndarray
    stacked: np.ndarray
    prefix_len: int
    seg_lens: tuple[int, ...]
    suffix_len: int

    @property
    def k(self) -> int:
        return len(self.seg_lens)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seg_end(self) -> int:
        """``E = P + T``, where the suffix starts."""
        return self.prefix_len + sum(self.seg_lens)

    @property
    def seq_starts(self) -> np.ndarray:
        """``[k]`` sequence index where each segment starts."""
        return self.prefix_len + np.concatenate([[0], np.cumsum(self.seg_lens)[:-1]]).astype(int)


def _ids(x, what: str) -> list[int]:
    try:
        arr = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any conversion failure is the caller's input
        raise PineInputError(f"{what}: expected a list of token ids ({e})") from None
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise PineInputError(f"{what}: expected a flat list of integer token ids, got shape "
                             f"{arr.shape} of {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise PineInputError(f"{what}: negative token id {int(arr.min())}")
    return [int(t) for t in arr]


def build_layout(prefix_ids: Sequence[int], segments_ids: Sequence[Sequence[int]],
                 suffix_ids: Sequence[int], vocab_size: int | None = None) -> Layout:
    """Lay out ``prefix_ids``, ``segments_ids`` (k lists) and ``suffix_ids``.

    Raises :class:`PineInputError` for no segments, an empty segment, an empty suffix or a
    token id outside the vocabulary.
    """
    prefix = _ids(prefix_ids, "prefix_ids")
    if isinstance(segments_ids, str | bytes) or not isinstance(segments_ids, Sequence):
        raise PineInputError("segments_ids: expected a list of k token-id lists")
    if len(segments_ids) == 0:
        raise PineInputError("segments_ids: no segments (PINE needs at least one)")
    segs = [_ids(s, f"segments_ids[{i}]") for i, s in enumerate(segments_ids)]
    for i, s in enumerate(segs):
        if not s:
            raise PineInputError(f"segments_ids[{i}]: empty segment")
    suffix = _ids(suffix_ids, "suffix_ids")
    if not suffix:
        raise PineInputError("suffix_ids: empty suffix (the logits are read over the suffix)")
    ids = prefix + [t for s in segs for t in s] + suffix
    if vocab_size is not None and ids and max(ids) >= vocab_size:
        raise PineInputError(f"token id {max(ids)} outside the vocabulary of {vocab_size}")
    p, lens, s = len(prefix), tuple(len(x) for x in segs), len(suffix)
    e = p + sum(lens)
    doc = np.concatenate([np.zeros(p, int)] + [np.full(n, i + 1) for i, n in enumerate(lens)]
                         + [np.full(s, -1)]).astype(np.int32)
    off = np.arange(e + s, dtype=np.int32)
    stacked = off.copy()
    start = p
    for n in lens:
        off[start:start + n] = np.arange(n)
        stacked[start:start + n] = e - n + np.arange(n)
        start += n
    return Layout(np.asarray(ids, np.int32), doc, off, stacked, p, lens, s)


def layout_from_spans(ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> Layout:
    """A layout from one token sequence and the ``[start, stop)`` spans of its segments.

    The spans must be non-empty, non-overlapping, in order and contiguous (the tokens before
    the first span are the prefix, after the last the suffix), as in the official code.
    """
    ids = _ids(ids, "ids")
    if not spans:
        raise PineInputError("spans: no segments")
    prev = None
    for i, (a, b) in enumerate(spans):
        if not 0 <= a < b <= len(ids):
            raise PineInputError(f"spans[{i}] = ({a}, {b}): empty or outside the "
                                 f"{len(ids)} tokens")
        if prev is not None and a < prev:
            raise PineInputError(f"spans[{i}] = ({a}, {b}) overlaps or precedes the previous "
                                 f"span ending at {prev}")
        if prev is not None and a != prev:
            raise PineInputError(f"spans[{i}] = ({a}, {b}): a gap after the previous span "
                                 f"(ending at {prev}); segments must be contiguous")
        prev = b
    return build_layout(ids[:spans[0][0]], [ids[a:b] for a, b in spans], ids[spans[-1][1]:])

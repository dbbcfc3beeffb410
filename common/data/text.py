"""Text from the shipped data folder as language-model windows.

``shared_data_root()`` is where the evaluation data lives (``$HEADLAB_DATA``, default
``../shared/data``). :func:`icl_task_texts` reads a function-vector task file
(``icl_tasks/<kind>/<name>.json``, a list of ``{"input", "output"}``) as ``"Q: x\\nA: y\\n"``
texts; :class:`PackedTokens` tokenises texts once, joins them and cuts the stream into
``[seq_len]`` windows (no padding: every token is a training target).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from common.data.errors import DataError


def shared_data_root() -> pathlib.Path:
    """``$HEADLAB_DATA`` or ``../shared/data``; FileNotFoundError naming both if absent."""
    root = pathlib.Path(os.environ.get("HEADLAB_DATA", "../shared/data"))
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found: set HEADLAB_DATA to the shipped "
                                "data folder (the one holding icl_tasks/ and classification/)")
    return root


def icl_task_texts(task: str, root: pathlib.Path | None = None) -> list[str]:
    """The examples of ``icl_tasks/<task>.json`` (e.g. ``abstractive/antonym``) as texts."""
    path = (root or shared_data_root()) / "icl_tasks" / f"{task}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ICL task file (task names are "
                                "<abstractive|extractive>/<name>)")
    try:
        items = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty JSON list of {{input, output}} objects")
    texts = []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("input"), str)
                and isinstance(item.get("output"), str)):
            raise DataError(f"{path}: item {i} lacks a string 'input' or 'output': {item!r:.80}")
        texts.append(f"Q: {item['input']}\nA: {item['output']}\n")
    return texts


class PackedTokens:
    """Texts tokenised, joined and cut into windows: example ``i`` is
    ``{"input_ids": int32 [seq_len]}``, tokens ``[i * seq_len, (i + 1) * seq_len)`` of the stream.

    Args:
      texts: the documents, in order.
      encode: ``text -> list of token ids``.
      seq_len: window length.
      start, stop: the window range to expose (a train/validation split of the same stream).
    """

    def __init__(self, texts: Sequence[str], encode: Callable[[str], Sequence[int]],
                 seq_len: int, start: int = 0, stop: int | None = None):
        stream = np.fromiter((t for text in texts for t in encode(text)), dtype=np.int32)
        n = len(stream) // seq_len
        if n == 0:
            raise DataError(f"PackedTokens: {len(stream)} tokens make no window of {seq_len}")
        self.windows = stream[:n * seq_len].reshape(n, seq_len)[start:stop]
        if len(self.windows) == 0:
            raise DataError(f"PackedTokens: windows [{start}, {stop}) of {n} are empty")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"input_ids": self.windows[i]}

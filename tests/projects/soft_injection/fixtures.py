"""A tiny random Llama-style model, a character tokenizer and task files written to a temporary
data folder: the soft_injection tests' fixtures (no real model or data needed)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from common.models import ModelConfig
from tests.common.interp.conftest import make_model

TINY = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                   d_mlp=48, rope_theta=100.0)


class CharTokenizer:
    """One token per character (code point mod 128)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 128 for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:  # noqa: ARG002
        return "".join(chr(int(i)) for i in ids)


def tiny_model(seed: int = 0):
    return make_model(TINY, seed)


WORDS = ["apple", "berry", "cedar", "delta", "ember", "fable", "grape", "heron", "igloo", "jelly",
         "koala", "lemon", "mango", "noble", "olive", "piano", "quilt", "raven", "salsa", "tiger",
         "umbra", "vivid", "waltz", "xenon", "yodel", "zebra", "amber", "bison", "coral", "dune"]


def write_task(root: pathlib.Path, name: str, records, kind: str = "abstractive") -> pathlib.Path:
    d = root / "icl_tasks" / kind
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.json"
    p.write_text(json.dumps(records))
    return p


def write_tasks(root: pathlib.Path) -> list[str]:
    """Two small tasks: first letter capitalised, and word length (digit outputs)."""
    write_task(root, "first_letter", [{"input": w, "output": w[0].upper()} for w in WORDS])
    write_task(root, "word_len", [{"input": w + "s" * (i % 3), "output": str(5 + i % 3)}
                                  for i, w in enumerate(WORDS)], kind="extractive")
    return ["first_letter", "word_len"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)

"""A tiny random Llama-style model and a word-level toy tokenizer for the act_calibration tests."""

from __future__ import annotations

import zlib

from common.models import ModelConfig
from tests.common.interp.conftest import make_model

VOCAB = 256


class WordTokenizer:
    """Each whitespace-separated word (with its leading space, newlines kept as tokens) is one
    token: a fixed id for words seen in ``known``, else a hash into the vocabulary."""

    def __init__(self, known=()):
        self.fixed = {w: i + 1 for i, w in enumerate(known)}
        self.names = {i: w for w, i in self.fixed.items()}

    def _id(self, word: str) -> int:
        if word in self.fixed:
            return self.fixed[word]
        return len(self.fixed) + 1 + zlib.crc32(word.encode()) % (VOCAB - len(self.fixed) - 1)

    def encode(self, text: str) -> list[int]:
        out = []
        for line_no, line in enumerate(text.split("\n")):
            if line_no:
                out.append(0)  # newline
            out += [self._id(" " + w) for w in line.split()]
        return out or [0]

    def id_to_token(self, i: int) -> str:
        return "Ċ" if i == 0 else self.names.get(int(i), f"Ġw{i}")


LABEL_WORDS = ("negative", "positive", "terrible", "bad", "okay", "good", "great", "Yes", "No",
               "Maybe", "Expression", "Entity", "Description", "Person", "Location", "Number")


def tiny(n_layers: int = 5, seed: int = 0):
    """``(model, tokenizer)``: 4 query heads on 2 KV heads, ``n_layers`` layers, vocab 256."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                      d_head=8, d_mlp=48, rope_theta=100.0, max_position=512)
    return make_model(cfg, seed=seed), WordTokenizer(" " + w for w in LABEL_WORDS)

"""A TFDS ``GeneratorBasedBuilder`` prepared to ArrayRecord without TensorFlow.

``headlab_tokens`` holds :class:`~common.data.sources.InducedTokens` sequences. TFDS writes
``GeneratorBasedBuilder`` datasets as ArrayRecord with ``file_format="array_record"`` and reads
them back with ``tfds.data_source`` (random access, no ``tf.data``), which grain consumes
directly. Neither step imports TensorFlow.

    path = prepare_tokens(data_dir, seq_len=64, vocab_size=128)
    source = tokens_source(data_dir, split="train")   # len + __getitem__ -> {"input_ids": ...}
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from common.data.sources import InducedTokens


class HeadlabTokensConfig(tfds.core.BuilderConfig):
    """Shape of the generated data: one config per ``(seq_len, vocab_size, sizes)``."""

    def __init__(self, *, seq_len: int, vocab_size: int, train_size: int, eval_size: int, **kw):
        super().__init__(**kw)
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.train_size, self.eval_size = train_size, eval_size


class HeadlabTokens(tfds.core.GeneratorBasedBuilder):
    """Induction-structured token sequences (see ``InducedTokens``); splits train/validation."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS derives this through ``importlib_resources`` for builders inside packages (a module
    # not installed here); the file path is all it needs.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [
        HeadlabTokensConfig(name="tiny", seq_len=64, vocab_size=128, train_size=4096,
                            eval_size=256),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly (not dataset_info_from_configs, which reads package metadata files).
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="Random token prefixes followed by their repeat (induction data).",
            features=tfds.features.FeaturesDict(
                {"input_ids": tfds.features.Tensor(shape=(cfg.seq_len,), dtype=np.int32)}),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples(cfg.train_size, seed=0),
            "validation": self._generate_examples(cfg.eval_size, seed=1),
        }

    def _generate_examples(self, n: int, seed: int):
        cfg = self.builder_config
        src = InducedTokens(n, cfg.seq_len, cfg.vocab_size, seed=seed)
        for i in range(n):
            yield i, src[i]


def prepare_tokens(data_dir: str | os.PathLike, config: str = "tiny") -> str:
    """Prepare ``headlab_tokens/<config>`` as ArrayRecord under ``data_dir``; returns its path."""
    builder = HeadlabTokens(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return str(builder.data_path)


def tokens_source(data_dir: str | os.PathLike, split: str = "train", config: str = "tiny"):
    """Random-access TFDS source of a prepared ``headlab_tokens`` split (no TensorFlow)."""
    return tfds.data_source(f"headlab_tokens/{config}", data_dir=str(data_dir), split=split)

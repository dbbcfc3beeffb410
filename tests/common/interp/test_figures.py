"""Figures: PNG files with the right content size; bad input named."""

from __future__ import annotations

import numpy as np
import pytest

from common.interp import Labelled, plot_attention_patterns, plot_head_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_attention_pattern_heatmaps(full_cache, tmp_path):
    cache = full_cache[1]
    tokens = ["<s>", "The", " cat", " sat", " on", " it"]
    path = plot_attention_patterns(cache, [(0, 1), (1, 3)], tokens, tmp_path / "p.png", pdf=True)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert (tmp_path / "p.pdf").exists()
    with pytest.raises(ValueError, match=r"expected \[q_len, 5\]"):
        plot_attention_patterns(cache, [(0, 1)], tokens[:5], tmp_path / "bad.png")


def test_head_score_heatmap(tmp_path):
    scores = Labelled(np.arange(12.0).reshape(3, 4) - 6, ("layer", "head"), {"layer": (0, 2, 5)})
    path = plot_head_scores(scores, tmp_path / "s.png", title="patching", label="logit diff")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"Labelled \[layer, head\]"):
        plot_head_scores(np.zeros((3, 4)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_head_scores(scores, tmp_path / "s.jpg")

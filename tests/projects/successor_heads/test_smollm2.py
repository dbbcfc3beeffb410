"""The weight-based scan on the real SmolLM2-135M-Instruct (skipped without the GGUF): the
copy control finds the pilot's copy heads, no head passes the successor bar, and the tokenizer
drops what the spec says it drops."""

from __future__ import annotations

import numpy as np
import pytest

from projects.successor_heads import succession, tasks

pytestmark = pytest.mark.smollm2


def test_scan_copy_heads_and_no_successor_head(smollm2):
    model, tok = smollm2
    classes, gone = tasks.build_classes(tok)
    by = {c.name: c for c in classes}
    assert [d.name for d in gone] == ["numbers"]  # " 5" is two tokens: no spaced digit
    assert by["numbers/bare"].items == tuple(str(i) for i in range(10))
    assert {t for t, _ in by["day_prefixes"].dropped} == {" Tue", " Thu"}
    assert len(by["months"].items) == 12 and len(by["letters"].items) == 26
    sc = succession.score_heads(model, classes, embed_mode="mlp0_only", final_norm=True)
    copy = np.asarray(sc.copy)
    for layer, h in [(23, 0), (23, 2), (24, 5)]:  # the pilot's copy heads
        assert copy[layer, h] > 0.9, (layer, h, copy[layer, h])
    assert float(np.max(np.asarray(sc.succession))) < 0.4
    assert 0.07 < sc.chance < 0.08


def test_score_program_scratch_stays_below_the_mmap_threshold(smollm2):
    """The compiled scoring program's scratch stays below glibc's largest mmap threshold (32
    MiB): above it every call maps its scratch afresh and faults each page in (measured 14 ->
    19.5 ms per call); XLA:CPU's default schedule needed 41 MB for SmolLM2."""
    model, tok = smollm2
    classes, _ = tasks.build_classes(tok)
    _, jitted, args = succession._score_call(model, classes, "mlp0_only", True)
    temp = jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp < 32 * 2**20, f"{temp / 2**20:.1f} MiB of scratch"

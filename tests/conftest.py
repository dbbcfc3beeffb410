"""Shared fixtures. Tests run on one CPU device; multi-device tests start subprocesses."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HEADLAB_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the cached SmolLM2 GGUF, fetched once (``tools/fetch_model.py``).

    Skips when it cannot be had, unless ``HEADLAB_REQUIRE_SMOLLM2=1`` (set in CI), which fails.
    """
    try:
        from common.weights import default_model_path

        return default_model_path("smollm2-135m-instruct")
    except Exception as e:  # noqa: BLE001 - report any fetch failure
        if os.environ.get("HEADLAB_REQUIRE_SMOLLM2") == "1":
            raise
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct in float32, loaded once per session."""
    from common.models import load_pretrained

    return load_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path):
    """transformers' own model loaded from the same SmolLM2 GGUF (float32, eval mode): the
    independent reference, loaded once per session (about 40 s on 2 cores)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32)
    return model.eval()

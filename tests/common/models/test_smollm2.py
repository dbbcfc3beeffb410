"""SmolLM2-135M-Instruct: our logits against Hugging Face transformers on the same GGUF."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.models.generation import generate

pytestmark = pytest.mark.smollm2

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Monday, Tuesday, Wednesday, Thursday, 1 2 3 4 5 6 7",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_model(hf_smollm2):
    return hf_smollm2


@nnx.jit
def _logits(model, ids):
    return model(ids)


def test_config_is_smollm2(smollm2):
    cfg = smollm2[0].config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head) == (30, 576, 9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.tie_embeddings and cfg.rope_theta == 100000.0


def test_logits_match_transformers(smollm2, hf_model):
    import torch

    model, tok = smollm2
    worst = 0.0
    for text in PROMPTS:
        ids = tok.encode(text)
        ours = np.asarray(_logits(model, jnp.asarray([ids])))[0]
        with torch.no_grad():
            ref = hf_model(torch.tensor([ids])).logits[0].float().numpy()
        diff = np.abs(ours - ref).max(axis=-1)  # every position
        worst = max(worst, float(diff.max()))
        assert diff.max() <= 1e-3, (text, diff.max(), int(diff.argmax()))
        assert (ours.argmax(-1) == ref.argmax(-1)).all()
    print(f"max |logit diff| over {len(PROMPTS)} prompts: {worst:.2e}")


def test_greedy_generation_matches_transformers(smollm2, hf_model):
    import torch

    model, tok = smollm2
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Name a colour."}]))
    ours = generate(model, [ids], 12, eos_token_id=[])[0]
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert ours == ref

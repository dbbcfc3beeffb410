"""Tiny randomly initialised Hugging Face models built locally: the independent reference."""

from __future__ import annotations

import numpy as np


def tiny_hf_model(arch: str, seed: int = 0):
    """A tiny transformers model of ``arch`` (llama, qwen2, gpt2, neox) in float32 eval mode."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, rope_theta=1000.0, rms_norm_eps=1e-5,
                             tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "llama_tied":
        cfg = tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                             max_position_embeddings=128, tie_word_embeddings=True)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "llama3_scaled":
        cfg = tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8},
                             rope_theta=500000.0, tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, tie_word_embeddings=False)
        model = tf.Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "neox":
        cfg = tf.GPTNeoXConfig(vocab_size=97, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.25,
                               max_position_embeddings=128, use_parallel_residual=True,
                               tie_word_embeddings=False)
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # Random init leaves norms at 1/0 and some biases at 0; perturb every tensor so each one
    # matters to the comparison.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.float().eval()


def hf_arch(arch: str) -> str:
    return {"llama": "llama", "llama_tied": "llama", "llama3_scaled": "llama", "qwen2": "llama",
            "gpt2": "gpt2", "neox": "neox"}[arch]


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def hf_logits(model, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
        return model(torch.tensor(ids, dtype=torch.long), **kw).logits.float().numpy()

"""A brute-force float64 numpy Llama forward from a Hugging Face state dict: the reference for
float64 models (HF's own Llama computes RMSNorm and RoPE in float32 even in a float64 model).

Written from the definitions, loops over layers, heads and query positions; no JAX, no torch.
"""

from __future__ import annotations

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, pos, theta):
    """Rotate-half RoPE of ``x [seq, head_dim]`` at integer ``pos [seq]`` in float64."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[:, d // 2:], x[:, :d // 2]], -1)
    return x * cos + rot * sin


def llama_logits(sd: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """``ids [batch, seq]`` -> logits ``[batch, seq, vocab]`` (float64), causal, positions
    ``0..seq-1``; ``cfg`` the HF config dict (default RoPE only)."""
    h, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // h
    eps = cfg["rms_norm_eps"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    w = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    lm = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    out = []
    for seq in ids:
        s = len(seq)
        pos = np.arange(s)
        x = w["model.embed_tokens.weight"][seq]
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            y = _rms(x, w[p + "input_layernorm.weight"], eps)
            q = (y @ w[p + "self_attn.q_proj.weight"].T).reshape(s, h, d)
            k = (y @ w[p + "self_attn.k_proj.weight"].T).reshape(s, kvh, d)
            v = (y @ w[p + "self_attn.v_proj.weight"].T).reshape(s, kvh, d)
            z = np.zeros((s, h, d))
            for head in range(h):
                kv = head // (h // kvh)
                qh, kh = _rope(q[:, head], pos, theta), _rope(k[:, kv], pos, theta)
                for i in range(s):
                    logit = kh[:i + 1] @ qh[i] / np.sqrt(d)
                    prob = np.exp(logit - logit.max())
                    z[i, head] = (prob / prob.sum()) @ v[:i + 1, kv]
            x = x + z.reshape(s, h * d) @ w[p + "self_attn.o_proj.weight"].T
            y = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
            gate = y @ w[p + "mlp.gate_proj.weight"].T
            hid = gate / (1.0 + np.exp(-gate)) * (y @ w[p + "mlp.up_proj.weight"].T)
            x = x + hid @ w[p + "mlp.down_proj.weight"].T
        out.append(_rms(x, w["model.norm.weight"], eps) @ lm.T)
    return np.stack(out)

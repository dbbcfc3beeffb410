"""On the real SmolLM2 weights: soft injection's greedy continuation (our KV-cached generate, the
mixing in the prefill only) equals transformers' ``generate`` with the official mechanism, a
forward pre-hook on every ``o_proj`` that mixes the last position only while the sequence is
longer than one token."""

from __future__ import annotations

import numpy as np
import pytest

from common.interp.task_embedding import task_embedding
from projects.soft_injection import episodes, evaluate


@pytest.mark.slow
@pytest.mark.smollm2
def test_injected_greedy_continuations_match_transformers(smollm2, hf_smollm2):
    import torch

    model, tok = smollm2
    cfg = model.config
    texts = ["Q: France\nA:", "Q: cold\nA:", "Q: walk\nA:"]
    ids = tuple(tuple(tok.encode(t)) for t in texts)
    prompts = episodes.Prompts(ids, np.zeros(3, np.int32), np.zeros(3, np.int32), 0,
                               (" Paris", " hot", " walked"))
    icl = [tok.encode("Q: Spain\nA: Madrid\n\nQ: Italy\nA: Rome\n\nQ: Peru\nA:"),
           tok.encode("Q: up\nA: down\n\nQ: big\nA: small\n\nQ: go\nA:")]
    v = np.asarray(task_embedding(model, icl, batch_size=2))
    a = 1 / (1 + np.exp(-np.random.default_rng(0).normal(0, 2, (cfg.n_layers, cfg.n_heads))))
    n_new = 8
    ours = evaluate.continuations(model, tok, prompts, alpha=a, v=v, batch_size=3,
                                  max_new_tokens=n_new)

    def hook(layer):
        at = torch.as_tensor(a[layer], dtype=torch.float32)[:, None]
        vt = torch.as_tensor(v[layer], dtype=torch.float32)

        def pre(module, args):
            x = args[0]
            if x.shape[1] <= 1:  # a generated token: not injected
                return None
            z = x.view(x.shape[0], x.shape[1], cfg.n_heads, cfg.d_head).clone()
            z[:, -1] = (1 - at) * z[:, -1] + at * vt
            return (z.view_as(x),) + tuple(args[1:])
        return pre

    hs = [hf_smollm2.model.layers[i].self_attn.o_proj.register_forward_pre_hook(hook(i))
          for i in range(cfg.n_layers)]
    try:
        theirs = []
        for p in ids:
            x = torch.as_tensor([p])
            with torch.no_grad():
                out = hf_smollm2.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                          max_new_tokens=n_new, pad_token_id=0)
            theirs.append(tok.decode(out[0, len(p):].tolist(), skip_special_tokens=True))
    finally:
        for h in hs:
            h.remove()
    assert ours == theirs
    clean = evaluate.continuations(model, tok, prompts, batch_size=3, max_new_tokens=n_new)
    assert clean != ours  # the injection changes what is generated

"""A TransformerLens user's first hour, in our vocabulary: five everyday tasks on SmolLM2.

    python -m tools.examples.transformerlens_tour          # about a minute on a laptop CPU

1. cache an attention pattern      4. activation vs attribution patching
2. ablate a head                   5. cross-check with Hugging Face transformers' hooks
3. read a head's OV circuit

Each cell shows the TransformerLens call it replaces in a comment. The prompts carry no BOS
token: ``tokenizer.to_tokens`` does what SmolLM2's own Hugging Face tokenizer does (no BOS), so
the first token (" When") is the attention sink; pass ``prepend_bos=True`` for TransformerLens'
habit. ``tests/common/interp/test_tour.py`` runs :func:`main` and checks what it returns.
"""

from __future__ import annotations

import time

import numpy as np

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
LAYER, HEAD = 23, 3  # the head that restores most in cell 4 (a name mover)


def main(model=None, tokenizer=None, hf_model=None, *, verbose: bool = True) -> dict:
    """Run the five tasks; returns what each produced (the test checks it).

    ``model, tokenizer`` default to ``load_pretrained("smollm2-135m-instruct")``; ``hf_model``
    to transformers' model on the same GGUF (cell 5; pass ``False`` to skip it).
    """
    from common.interp import (
        OV,
        Intervention,
        activation_patching,
        attribution_patching,
        compare_patching,
        forward,
        get_act_name,
        logit_diff,
    )
    from common.models import load_pretrained

    say = print if verbose else (lambda *a, **k: None)
    out: dict = {}
    t0 = time.perf_counter()

    # %% 0. Load. TL: model = HookedTransformer.from_pretrained("...")
    if model is None:
        model, tokenizer = load_pretrained("smollm2-135m-instruct")
    cfg = model.cfg  # TL: model.cfg
    say(f"{cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_key_value_heads} kv heads), "
        f"d_model {cfg.d_model}, d_head {cfg.d_head}, d_vocab {cfg.d_vocab}")
    clean = tokenizer.to_tokens(CLEAN)  # TL: model.to_tokens(CLEAN)   [batch, pos]
    corrupted = tokenizer.to_tokens(CORRUPTED)
    str_tokens = tokenizer.to_str_tokens(CLEAN)  # TL: model.to_str_tokens(CLEAN)
    mary = tokenizer.to_single_token(" Mary")  # TL: model.to_single_token(" Mary")
    john = tokenizer.to_single_token(" John")
    out.update(clean=clean, corrupted=corrupted, str_tokens=str_tokens, mary=mary, john=john)

    # %% 1. Cache a pattern. TL: logits, cache = model.run_with_cache(tokens)
    #    (names_filter keeps what is asked; the pattern is computed only where asked)
    logits, cache = model.run_with_cache(clean, names_filter=["pattern", "z"])
    pattern = cache["pattern", LAYER]  # TL: cache["pattern", 23]   [batch, head, q, k]
    same = cache[get_act_name("pattern", LAYER)]  # TL's hook name: "blocks.23.attn.hook_pattern"
    last_row = np.asarray(pattern[0, HEAD, -1])  # where the head looks from the last token
    top = np.argsort(-last_row)[:3]
    say(f"L{LAYER}H{HEAD} attends from {str_tokens[-1]!r} to "
        + ", ".join(f"{str_tokens[i]!r} ({last_row[i]:.2f})" for i in top))
    z_last = cache["z", -1]  # TL: cache["z", -1], the last layer
    out.update(logits=logits, pattern=pattern, pattern_by_hook_name=same, z_last=z_last,
               cache=cache)

    # %% 2. Ablate a head. TL: model.run_with_hooks(tokens, fwd_hooks=[(get_act_name("z", 23),
    #    lambda z, hook: z.index_fill_(2, torch.tensor([3]), 0))])
    def diff(lg):  # logit difference " Mary" - " John" at the last position
        return float(lg[0, -1, mary] - lg[0, -1, john])

    ablate = Intervention.ablate(model, [(LAYER, HEAD)])  # a list of (layer, head) pairs
    ablated = forward(model, clean, intervention=ablate)
    say(f"logit diff Mary - John: {diff(logits):.3f}, with L{LAYER}H{HEAD} ablated "
        f"{diff(ablated):.3f}")
    out.update(ablated=ablated, diff=diff(logits), diff_ablated=diff(ablated))

    # %% 3. A head's OV circuit. TL: model.OV[23, 3] (a FactoredMatrix). model.OV here is the
    #    full [layer, head, d_model, d_model] stack (360 MB); OV(model, layers=[23]) is one layer.
    ov = OV(model, layers=[LAYER])[LAYER, HEAD]  # [d_model_in, d_model_out], layer 23 by label
    copied = model.W_E[mary] @ ov @ model.W_U  # TL: model.W_E[mary] @ model.OV[23, 3] @ model.W_U
    best = [(tokenizer.decode([v]), round(s, 2)) for (v,), s in copied.top(5)]
    say(f"L{LAYER}H{HEAD} OV maps ' Mary' to {best}")
    out.update(ov=ov, ov_top=best)

    # %% 4. Activation vs attribution patching, on one scale (clean = 1, corrupted = 0).
    #    TL: patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    metric = logit_diff(mary, john)  # reads two logits: fast (a lambda would unembed all 49k)
    exact = activation_patching(model, clean, corrupted, metric, normalize=True)
    estimate = attribution_patching(model, clean, corrupted, metric, normalize=True)
    comparison = compare_patching(exact, estimate)
    say(f"clean {float(exact.clean):.3f}, corrupted {float(exact.corrupted):.3f}; heads that "
        "restore most: " + ", ".join(f"L{l}H{h} {v:+.2f}" for (l, h), v in exact.top(3)))
    say(str(comparison))
    out.update(exact=exact, estimate=estimate, comparison=comparison)

    # %% 5. Cross-check with transformers: z (the input of o_proj) and the same ablation by a
    #    PyTorch hook, on the same GGUF weights.
    if hf_model is not False:
        import torch

        if hf_model is None:
            import transformers

            from common.weights import default_model_path

            path = default_model_path("smollm2-135m-instruct")
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        attn = hf_model.model.layers[LAYER].self_attn
        d = cfg.d_head
        seen = {}

        def keep_z(mod, args):
            seen["z"] = args[0].detach().numpy()

        def zero_head(mod, args):
            x = args[0].clone()
            x[..., HEAD * d:(HEAD + 1) * d] = 0
            return (x,)

        ids = torch.tensor(np.asarray(clean), dtype=torch.long)
        with torch.no_grad():
            handle = attn.o_proj.register_forward_pre_hook(keep_z)
            hf_logits = hf_model(ids).logits.numpy()
            handle.remove()
            handle = attn.o_proj.register_forward_pre_hook(zero_head)
            hf_ablated = hf_model(ids).logits.numpy()
            handle.remove()
        ours_z = np.asarray(cache["z", LAYER]).reshape(seen["z"].shape)
        z_err = float(np.abs(ours_z - seen["z"]).max())
        ablation_err = abs(diff(ablated) - diff(hf_ablated))
        logits_err = float(np.abs(np.asarray(logits) - hf_logits).max())
        say(f"transformers: z max difference {z_err:.1e}, logits {logits_err:.1e}, ablated "
            f"logit diff {diff(hf_ablated):.4f} (ours {diff(ablated):.4f})")
        out.update(hf_z=seen["z"], z_err=z_err, hf_logits=hf_logits, hf_ablated=hf_ablated,
                   ablation_err=ablation_err, logits_err=logits_err)
    out["seconds"] = time.perf_counter() - t0
    say(f"tour done in {out['seconds']:.0f} s")
    return out


if __name__ == "__main__":
    main()

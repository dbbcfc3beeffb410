"""Benchmark: the succession score of every head of SmolLM2-135M-Instruct (270 heads), ours
(one jitted program over all heads, ``projects.successor_heads.succession``) against the same
computation on Hugging Face transformers' weights from the same GGUF in a per-head torch loop,
in one process. Target (issue 14): at least 10x.

The torch loop computes, per (layer, head): the effective embedding MLP0(N_2(W_E)) of the class
tokens (once), ``E_eff @ W_V[kv(h)]ᵀ @ W_O[h]ᵀ``, the final RMSNorm, the logits over the class
tokens, and the per-pair success (ties count); exactly the pooled score of ours. The two score
tables are compared (fraction of heads with the same score; max difference).

    python -m tools.bench_successor [--repeats 3] [--calls 5]

The script also measures this machine's float32 matmul peak in the same run (the best of
JAX's and torch's square GEMMs) and prints the floor it sets: the multiply-adds our program
cannot avoid (the effective embedding ``MLP0`` of the class tokens, ``M = W_O (γ ⊙ W_U)``
for every head and each class's tokens, ``A = E_eff W_V`` for every KV head, the class blocks
``A M``) divided by that peak. Against the torch loop's time
that floor is the largest ratio any float32 implementation can reach here.

Nothing is cached between our calls: each one builds the pair table and its class layout from
the classes, splits the model into its graph and parameters and runs the compiled program, as a
researcher's repeated call would. The script also times the compiled program alone on prepared
arguments (``program``), so that the Python share of a call shows.

Timings on a shared machine are noisy (torch's loop especially: on this 2-core machine under
load its best-of-7 ranged from 0.08 s to 4.4 s between runs), so the two sides are timed
alternately, ``--repeats`` rounds, and the script reports each side's best and the median of
the per-round ratios (each round's time of a side is the best of ``--calls`` calls).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tools import roofline


def matmul_peak(n: int = 1536, repeats: int = 5) -> dict:
    """Best float32 GEMM rate ``[n, n] @ [n, n]`` in GFLOP/s, JAX and torch (same process)."""
    return {"jax_gflops": roofline.jax_matmul_gflops(n, repeats),
            "torch_gflops": roofline.torch_matmul_gflops(n, repeats)}


def score_flops(cfg, table) -> dict:
    """Multiply-add FLOPs of our program's products and of the torch loop's.

    Both compute the effective embedding ``MLP0`` of the ``m`` tokens once (``mlp0_gflop``,
    included in both totals). Ours then needs ``M = W_O (γ ⊙ W_U)`` for every head and each
    class's token columns (``Σ n_c`` of them), ``A = E_eff W_V`` for every KV head, and the
    class blocks ``A M`` (``Σ n_c²`` entries per head); the torch loop, per head, ``x W_Vᵀ``,
    ``· W_Oᵀ`` and ``· W_Uᵀ`` over the ``m`` tokens."""
    L, H, K, k, d = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    m = len(table.tokens)
    sizes = [int(c.sum()) for c in table.cand]
    mlp0 = 2.0 * m * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    ours = mlp0 + 2.0 * (L * H * k * d * sum(sizes) + L * K * m * d * k
                         + L * H * k * sum(n * n for n in sizes))
    torch_loop = mlp0 + 2.0 * L * H * (2 * m * d * k + m * d * m)
    return {"ours_gflop": ours / 1e9, "torch_loop_gflop": torch_loop / 1e9,
            "mlp0_gflop": mlp0 / 1e9}


def torch_scores(hf, tokens: np.ndarray, table, full_ov: bool = False) -> np.ndarray:
    """``[L, H]`` pooled succession scores, one head at a time in torch; ``full_ov`` forms
    each head's ``d_model x d_model`` OV matrix first (the derivative code's
    ``blocks[l].attn.OV``, TransformerLens style)."""
    import torch

    cfg = hf.config
    L, H, K = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    g = H // K
    ids = torch.as_tensor(tokens, dtype=torch.long)
    src, tgt, cls = (torch.as_tensor(a, dtype=torch.long) for a in (table.src, table.tgt,
                                                                     table.cls))
    cand = torch.as_tensor(table.cand)[cls]  # [P, m]
    pooled = torch.as_tensor(table.pooled)[cls]
    out = np.zeros((L, H))
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight[ids]  # [m, d]
        layer0 = hf.model.layers[0]
        x = layer0.mlp(layer0.post_attention_layernorm(emb))  # MLP0(N_2(W_E))
        wu = hf.lm_head.weight[ids]  # [m, d] (tied)
        for layer in range(L):
            attn = hf.model.layers[layer].self_attn
            for h in range(H):
                wv = attn.v_proj.weight[(h // g) * D:(h // g + 1) * D]  # [D, d]
                wo = attn.o_proj.weight[:, h * D:(h + 1) * D]  # [d, D]
                if full_ov:
                    y = hf.model.norm(x @ (wv.T @ wo.T))  # OV [d, d] per head
                else:
                    y = hf.model.norm((x @ wv.T) @ wo.T)  # [m, d]
                logits = y @ wu.T  # [m, m]
                rows = logits[src]  # [P, m]
                best = torch.where(cand, rows, torch.tensor(-torch.inf)).max(-1).values
                hit = rows[torch.arange(len(src)), tgt] >= best
                out[layer, h] = hit[pooled].float().mean().item()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5,
                    help="calls of each side per round; its best counts (the first call after "
                         "the other side has run finds cold caches and a busy thread pool)")
    args = ap.parse_args(argv)

    import jax
    import torch
    import transformers

    from common.models import load_pretrained
    from common.weights import default_model_path
    from projects.successor_heads import succession, tasks

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = load_pretrained("smollm2-135m-instruct")
    classes, _ = tasks.build_classes(tok)
    table = succession.pair_table(classes)
    t0 = time.perf_counter()
    ours = succession.score_heads(model, classes, embed_mode="mlp0_only", final_norm=True)
    np.asarray(ours.succession)
    first = time.perf_counter() - t0
    ours_fn = lambda: np.asarray(succession.score_heads(  # noqa: E731
        model, classes, embed_mode="mlp0_only", final_norm=True).succession)

    path = default_model_path("smollm2-135m-instruct")
    t0 = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    load_hf = time.perf_counter() - t0
    ref = torch_scores(hf, table.tokens, table)
    ref_ov = torch_scores(hf, table.tokens, table, full_ov=True)
    _, program, prog_args = succession._score_call(model, classes, "mlp0_only", True)
    program_fn = lambda: jax.block_until_ready(program(*prog_args))  # noqa: E731
    t_ours, t_prog, t_loop, t_ov = [], [], [], []
    for _ in range(args.repeats):  # alternate, so that both see the same load
        t_ours.append(roofline.best_time(ours_fn, args.calls))
        t_prog.append(roofline.best_time(program_fn, args.calls))
        t_loop.append(roofline.best_time(lambda: torch_scores(hf, table.tokens, table),
                                         args.calls))
        t_ov.append(roofline.best_time(
            lambda: torch_scores(hf, table.tokens, table, full_ov=True), args.calls))
    warm, loop, loop_ov = min(t_ours), min(t_loop), min(t_ov)
    med = float(np.median(np.asarray(t_loop) / np.asarray(t_ours)))
    med_ov = float(np.median(np.asarray(t_ov) / np.asarray(t_ours)))
    peak = matmul_peak()
    flops = score_flops(model.config, table)
    best_rate = max(peak.values()) * 1e9
    floor = flops["ours_gflop"] * 1e9 / best_rate
    ours_s = np.asarray(ours.succession)
    same = float(np.mean(np.isclose(ours_s, ref, atol=1e-6)))
    res = {"heads": int(ours_s.size), "pairs": int(table.pooled[table.cls].sum()),
           "ours_first_call_s": first, "ours_warm_s": warm, "ours_program_s": min(t_prog),
           "torch_loop_s": loop,
           "ratio_warm": loop / warm, "ratio_first_call": loop / first,
           "median_round_ratio": med, "median_round_ratio_full_ov": med_ov,
           "torch_full_ov_loop_s": loop_ov, "ratio_vs_full_ov": loop_ov / warm,
           "full_ov_agreement": float(np.mean(np.isclose(ref_ov, ref, atol=1e-6))),
           "heads_with_equal_score": same, "max_abs_diff": float(np.abs(ours_s - ref).max()),
           "hf_load_s": load_hf, **peak, **flops, "ours_floor_s": floor,
           "jax_floor_s": flops["ours_gflop"] / peak["jax_gflops"],
           "ratio_bound": loop / floor, "ours_fraction_of_peak": floor / warm,
           "torch_loop_fraction_of_peak": flops["torch_loop_gflop"] * 1e9 / best_rate / loop}
    print(f"succession score of {res['heads']} heads on {res['pairs']} pairs (SmolLM2, fp32, "
          f"{torch.get_num_threads()} torch threads)")
    print(f"  ours (one jitted program): {warm * 1e3:.1f} ms warm, {first:.2f} s first call "
          f"(with compilation); the program alone {min(t_prog) * 1e3:.1f} ms, the rest is "
          "Python (pair table, layout, model split, results)")
    print(f"  transformers weights, per-head torch loop: {loop * 1e3:.1f} ms")
    print(f"  ratio: {res['ratio_warm']:.1f}x best vs best, median over {args.repeats} "
          f"alternating rounds {med:.1f}x (target >= 10x); {res['ratio_first_call']:.2f}x "
          "counting our compilation")
    print(f"  the same loop forming each head's d_model x d_model OV matrix (the derivative's "
          f"TransformerLens way): {loop_ov * 1e3:.1f} ms, ratio {res['ratio_vs_full_ov']:.1f}x "
          f"(median round {med_ov:.1f}x) "
          f"(scores equal on {res['full_ov_agreement'] * 100:.1f}% of heads)")
    print(f"  machine: float32 GEMM peak {peak['jax_gflops']:.0f} GFLOP/s (JAX), "
          f"{peak['torch_gflops']:.0f} GFLOP/s (torch), measured now")
    print(f"  floor: our products are {flops['ours_gflop']:.2f} GFLOP (MLP0 of the tokens "
          f"{flops['mlp0_gflop']:.2f} of it) -> at least {floor * 1e3:.1f} ms at the better "
          f"peak ({res['jax_floor_s'] * 1e3:.1f} ms at JAX's); ours runs at "
          f"{res['ours_fraction_of_peak']:.0%} of it, the torch loop "
          f"({flops['torch_loop_gflop']:.2f} GFLOP) at {res['torch_loop_fraction_of_peak']:.0%}")
    print(f"  so no float32 program can beat this torch loop by more than "
          f"{res['ratio_bound']:.1f}x on this machine (the target's 10x lies "
          f"{'beyond' if res['ratio_bound'] < 10 else 'within'} it)")
    print(f"  agreement: {same * 100:.1f}% of heads with the same score, max |diff| "
          f"{res['max_abs_diff']:.4f}")
    return res


if __name__ == "__main__":
    main()

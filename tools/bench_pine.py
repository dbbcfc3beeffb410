"""PINE's wall time over vanilla's on SmolLM2 (the paper: about 2x at k = 2, 8x at k = 20).

    python -m tools.bench_pine [--tokens 384] [--ks 2,5,10] [--rounds 5] [--decode 8]

For each k, one prompt of about ``--tokens`` tokens (a 24-token prefix, k equal segments, a
16-token suffix; random token ids: the time does not depend on them) runs through the plain
jitted forward (``model(ids)``, the baseline) and through the same forward with PINE's
intervention (method ``pine``; its inputs built on the host each call), both compiled first,
then timed alternately ``--rounds`` times; the ratio printed is the median of the per-round
ratios (each round times both sides back to back, so load from other
processes hits both). Targets of issue 17: at most 1.5x at k = 2 and 4x at k = 10. Each line
also gives the compiled programs' temporaries (XLA's ``memory_analysis``).

``--decode N`` (0 to skip) then times greedy decoding of N tokens under PINE at k = 2: the
jitted decode (``projects.pine.decode.pine_decode``: prefill and each step one compiled
program) against the eager one (``pine_decode_eager``, op by op), both run once first (the
jitted one compiles then), per new token after the prefill, median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def prompt_layout(k: int, tokens: int, seed: int = 0, prefix: int = 24, suffix: int = 16):
    """A layout of about ``tokens`` random ids with ``k`` equal segments."""
    from projects.pine.layout import build_layout

    rng = np.random.default_rng(seed)
    seg = max(1, (tokens - prefix - suffix) // k)
    ids = lambda n: rng.integers(3, 40000, n).tolist()  # noqa: E731
    return build_layout(ids(prefix), [ids(seg) for _ in range(k)], ids(suffix))


def time_pair(model, layout, rounds: int) -> dict:
    """Seconds per forward (median) of vanilla and PINE, and the median per-round ratio.

    Both sides are the jitted forward to logits on the device (``block_until_ready``); PINE's
    includes building its inputs on the host (mask, segment ids, RoPE tables) every call."""
    from projects.pine.forward import batch_inputs

    ids = jnp.asarray(layout.ids)[None]

    def vanilla():
        jax.block_until_ready(model(ids))

    def pine():
        ids_p, iv = batch_inputs([layout], "pine", bucket=1, model=model)
        jax.block_until_ready(model(ids_p, intervention=iv))

    vanilla()
    pine()  # compile both
    tv, tp = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        vanilla()
        t1 = time.perf_counter()
        pine()
        t2 = time.perf_counter()
        tv.append(t1 - t0)
        tp.append(t2 - t1)
    ratios = np.asarray(tp) / np.asarray(tv)
    from common.models.program_memory import forward_memory

    ids_p, iv = batch_inputs([layout], "pine", bucket=1, model=model)
    return {"tokens": layout.n, "vanilla_s": float(np.median(tv)), "pine_s": float(np.median(tp)),
            "ratio": float(np.median(ratios)),
            "vanilla_temp": forward_memory(model, ids).temp,
            "pine_temp": forward_memory(model, ids_p, intervention=iv).temp}


def time_decode(model, layout, n_new: int, rounds: int) -> dict:
    """Seconds per generated token (prefill excluded) of the jitted and the eager PINE decode,
    medians of ``rounds``; their tokens must agree."""
    from projects.pine.decode import pine_decode, pine_decode_eager

    def per_token(fn):
        t0 = time.perf_counter()
        fn(model, layout, "pine", 1)  # the prefill (and its first token) alone
        t1 = time.perf_counter()
        new, _ = fn(model, layout, "pine", n_new)
        t2 = time.perf_counter()
        return ((t2 - t1) - (t1 - t0)) / (n_new - 1), new

    per_token(pine_decode)  # compile prefill and step
    jit_s, eager_s = [], []
    for _ in range(rounds):
        tj, new_j = per_token(pine_decode)
        te, new_e = per_token(pine_decode_eager)
        if new_j != new_e:
            raise AssertionError(f"jitted and eager decoding disagree: {new_j} vs {new_e}")
        jit_s.append(tj)
        eager_s.append(te)
    return {"jit_s": float(np.median(jit_s)), "eager_s": float(np.median(eager_s)),
            "speedup": float(np.median(np.asarray(eager_s) / np.asarray(jit_s)))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=384)
    ap.add_argument("--ks", default="2,5,10")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--decode", type=int, default=8, help="new tokens of the decode bench")
    args = ap.parse_args(argv)
    from common.models import load_pretrained

    model, _ = load_pretrained(args.model)
    targets = {2: 1.5, 10: 4.0}
    print(f"PINE vs vanilla forward, {args.model}, ~{args.tokens} tokens, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for k in (int(x) for x in args.ks.split(",")):
        r = time_pair(model, prompt_layout(k, args.tokens), args.rounds)
        tgt = targets.get(k)
        verdict = "" if tgt is None else (f"  target <= {tgt}x: "
                                          + ("met" if r["ratio"] <= tgt else "NOT met"))
        print(f"k={k:2d}  {r['tokens']} tokens  vanilla {r['vanilla_s'] * 1e3:7.1f} ms  "
              f"PINE {r['pine_s'] * 1e3:7.1f} ms  ratio {r['ratio']:.2f}x{verdict}  "
              f"temporaries {r['vanilla_temp'] / 2**20:.0f} -> {r['pine_temp'] / 2**20:.0f} MiB")
    if args.decode > 1:
        d = time_decode(model, prompt_layout(2, args.tokens), args.decode, args.rounds)
        print(f"decode (PINE, k=2, {args.decode} tokens): jitted {d['jit_s'] * 1e3:.1f} ms/token, "
              f"eager {d['eager_s'] * 1e3:.1f} ms/token, speed-up {d['speedup']:.1f}x "
              f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""Benchmark: ACT's inference overhead and the head search with and without layer-prefix caching,
on SmolLM2-135M-Instruct, in one process.

1. **Inference overhead** (target under 1.3x): label log-probabilities of a batch of real
   few-shot prompts (SST-2, right-padded), plain forward against the forward with ACT on every
   head of layers 2..L-2 (``act_intervention(..., whole_range=True)``: the program the
   evaluation runs for any head set). The two are timed alternately, ``--repeats`` rounds; the
   script prints each side's best and the median of the per-round ratios.
2. **Head search**: one head at a time over ``--search-layers`` evenly spaced layers of the
   range, on ``--calib`` zero-shot prompts, cached (the layers below the head's layer once per
   batch) and uncached (the full forward per head); the ratio, the per-head accuracies'
   agreement, and the time for all heads extrapolated from the measured per-layer cost (the
   cached search's per-layer cost falls with the layer, so the extrapolation weights each
   layer by its share of the remaining layers).

    python -m tools.bench_act [--repeats 5] [--batch 8] [--calib 16] [--search-layers 3]

Compilation is excluded (each program is run once before timing).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--search-layers", type=int, default=3)
    args = ap.parse_args(argv)

    from common.interp.act import act_intervention, default_layers
    from common.models import load_pretrained
    from projects.act_calibration import data, prompts, scoring, search

    model, tok = load_pretrained("smollm2-135m-instruct")
    cfg = model.config
    layers = default_layers(cfg.n_layers)
    sp = data.split("sst2", n_demo_pool=32, n_calib=args.calib, n_test=args.batch)
    labels = prompts.label_tokens(tok, sp.spec)
    demos = prompts.sample_demos(sp.demos, args.shots, 0)
    ps = prompts.encode_prompts(tok, sp.spec, demos, sp.test)
    T = -(-max(len(p) for p in ps) // scoring.BUCKET) * scoring.BUCKET
    batch = scoring.make_batches(ps, batch_tokens=T * args.batch,
                                 max_batch=args.batch)
    batch = max(batch, key=lambda b: b.ids.size)
    sc = scoring.Scorer(model)
    iv = act_intervention(cfg, [(layer, h) for layer in layers for h in range(cfg.n_heads)],
                          layers=layers, token_valid=batch.valid, whole_range=True)
    print(f"load average {os.getloadavg()[0]:.1f}; batch {batch.ids.shape} (SST-2, "
          f"{args.shots}-shot); ACT on {cfg.n_heads * len(layers)} heads of layers "
          f"{layers[0]}..{layers[-1]}")

    def plain():
        return sc.label_logp(batch, labels)

    def act():
        return sc.label_logp(batch, labels, iv)

    plain()
    act()  # compile both
    tp, ta, ratios = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        act()
        t2 = time.perf_counter()
        tp.append(t1 - t0)
        ta.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    r = float(np.median(ratios))
    print(f"inference: plain {min(tp) * 1e3:.0f} ms, ACT {min(ta) * 1e3:.0f} ms (best of "
          f"{args.repeats}); median ratio {r:.2f}x (target < 1.3x: "
          f"{'met' if r < 1.3 else 'NOT met'})")

    # ---- head search, cached vs uncached
    ids = prompts.encode_prompts(tok, sp.spec, [], sp.calib)
    items = search.calib_items(ids, [labels] * len(ids), [e.label for e in sp.calib])
    pick = sorted({layers[int(round(i))] for i in
                   np.linspace(0, len(layers) - 1, args.search_layers)})
    for cached in (True, False):  # compile every program once
        search.head_search(sc, items, pick, heads=[0], cached=cached)
    res = {}
    for cached in (True, False):
        res[cached] = search.head_search(sc, items, pick, cached=cached)
    same = np.array_equal(res[True].correct, res[False].correct)
    tc, tu = res[True].seconds, res[False].seconds
    # extrapolate to every layer of the range: per-layer cost ~ (L - l) / L cached, 1 uncached
    share = np.asarray([(cfg.n_layers - layer) / cfg.n_layers for layer in layers])
    picked = np.asarray([(cfg.n_layers - layer) / cfg.n_layers for layer in pick])
    full_c = tc / picked.sum() * share.sum()
    full_u = tu / len(pick) * len(layers)
    n_heads = len(pick) * cfg.n_heads
    print(f"head search over {n_heads} heads (layers {pick}) on {res[True].n} prompts: cached "
          f"{tc:.1f} s, uncached {tu:.1f} s: {tu / tc:.2f}x faster cached; per-head accuracies "
          f"{'identical' if same else 'DIFFER'}")
    print(f"all {len(layers) * cfg.n_heads} heads of layers {layers[0]}..{layers[-1]} on these "
          f"prompts, extrapolated: cached {full_c / 60:.1f} min, uncached {full_u / 60:.1f} min "
          f"({full_u / full_c:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

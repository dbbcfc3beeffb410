"""The three evaluations of the run: judge flip rate, retrieval by gold position, time and
memory.

Every prompt is scored by the logits at its last position (no free generation: log-likelihood
scoring avoids format failures, papers/pine.md §13), many prompts per batched call.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.models.program_memory import forward_memory
from common.progress import bar
from projects.pine import data
from projects.pine.forward import batch_inputs, pine_forward_batch
from projects.pine.layout import Layout, build_layout
from projects.pine.method import METHODS


def _encode(tok, text: str) -> list[int]:
    return list(tok.encode(text))


def _last_logits(model, layouts: list[Layout], method: str, batch: int) -> np.ndarray:
    """``[len(layouts), vocab]`` logits at each prompt's last token."""
    out = []
    for i in range(0, len(layouts), batch):
        out += pine_forward_batch(model, layouts[i:i + batch], method, last_only=True)
    return np.stack(out)


def judge(model, tok, n_items: int, methods=METHODS, *, batch: int = 16, seed: int = 0,
          progress: bool = True) -> dict:
    """Per method: accuracy with the correct answer's segment first and second, the flip rate
    (the chosen label changes when the two labelled segments swap places) and the mean
    log-odds of "A" over "B" (label bias)."""
    items = data.judge_items(n_items, seed)
    a_id, b_id = _encode(tok, "A")[0], _encode(tok, "B")[0]
    layouts = []
    for it in items:
        pre, suf = _encode(tok, it.prefix), _encode(tok, it.suffix)
        segs = [_encode(tok, s) for s in it.segments]
        layouts.append(build_layout(pre, segs, suf))  # gold first
        layouts.append(build_layout(pre, segs[::-1], suf))  # gold second
    gold_is_a = np.array([it.gold_label == "A" for it in items])
    out = {}
    for method in bar(methods, "judge methods", unit="method", enabled=progress):
        lg = _last_logits(model, layouts, method, batch)
        log_odds = (lg[:, a_id] - lg[:, b_id]).reshape(n_items, 2)
        says_a = log_odds > 0
        right = says_a == gold_is_a[:, None]
        out[method] = {
            "acc_gold_first": float(right[:, 0].mean()),
            "acc_gold_second": float(right[:, 1].mean()),
            "flip_rate": float((says_a[:, 0] != says_a[:, 1]).mean()),
            "max_abs_logodds_change": float(np.abs(log_odds[:, 0] - log_odds[:, 1]).max()),
            "mean_logodds_a": float(log_odds.mean()),
        }
    return out


def retrieval(model, tok, ks, n_items: int, methods=METHODS, *, batch: int = 10,
              seed: int = 0, progress: bool = True) -> dict:
    """``{"k5": {method: [accuracy with the gold document at position 0..k-1]}}``."""
    space_digit = [_encode(tok, f" {d}") for d in range(10)]
    space = space_digit[0][:-1]
    digit_ids = [s[-1] for s in space_digit]
    out = {}
    for k in ks:
        items = data.retrieval_items(k, n_items, seed)
        layouts, golds, cands = [], [], []
        for it in items:
            pre = _encode(tok, it.prefix)
            suf = _encode(tok, it.suffix) + space
            docs = [_encode(tok, d) for d in it.documents]
            for pos in range(k):
                order = data.move_gold(it, pos)
                layouts.append(build_layout(pre, [docs[i] for i in order], suf))
                golds.append(int(it.codes[it.gold][0]))
                cands.append([int(c[0]) for c in it.codes])
        res = {}
        for method in bar(methods, f"retrieval k={k}", unit="method", enabled=progress):
            lg = _last_logits(model, layouts, method, batch)
            pick = [c[int(np.argmax(row[[digit_ids[d] for d in c]]))]
                    for row, c in zip(lg, cands, strict=True)]
            hit = (np.asarray(pick) == np.asarray(golds)).reshape(n_items, k)
            res[method] = [float(x) for x in hit.mean(axis=0)]
        out[f"k{k}"] = res
    return out


def timing(model, ks, tokens: int, rounds: int, methods=METHODS, *,
           progress: bool = True) -> tuple[dict, dict]:
    """Seconds per forward of one ~``tokens``-token prompt with k segments, per method
    (vanilla also as the plain forward ``model(ids)``: ``plain``); medians of ``rounds``
    interleaved rounds, after one compile call each. And the memory of each compiled program
    (:func:`common.models.program_memory.forward_memory`: temporaries, arguments, outputs in
    bytes). Returns ``(timing, memory)``, both keyed ``"k{k}"`` then method."""
    rng = np.random.default_rng(0)
    out, memory = {}, {}
    for k in bar(ks, "timing", unit="k", enabled=progress):
        seg = max(1, (tokens - 40) // k)
        ids = lambda n: rng.integers(3, 40000, n).tolist()  # noqa: E731
        lay = build_layout(ids(24), [ids(seg) for _ in range(k)], ids(16))
        x = jnp.asarray(lay.ids)[None]
        runs = {"plain": lambda x=x: jax.block_until_ready(model(x))}

        def method_run(m, lay=lay):
            # the forward to logits on the device, its inputs built on the host each call (no
            # copy of the [tokens, vocab] logits to the host, which the plain side does not pay)
            ids_m, iv = batch_inputs([lay], m, bucket=1, model=model)
            jax.block_until_ready(model(ids_m, intervention=iv))

        for m in methods:
            runs[m] = functools.partial(method_run, m)
        for f in runs.values():
            f()
        memory[f"k{k}"] = {"plain": forward_memory(model, x).as_dict()}
        for m in methods:
            ids_m, iv = batch_inputs([lay], m, bucket=1, model=model)
            memory[f"k{k}"][m] = forward_memory(model, ids_m, intervention=iv).as_dict()
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        out[f"k{k}"] = {name: float(np.median(t)) for name, t in times.items()}
        out[f"k{k}"]["tokens"] = lay.n
    return out, memory

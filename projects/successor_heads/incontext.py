"""In-context succession: where SmolLM2 writes the successor on list prompts (spec §12).

A *list prompt* is ``prefix + " t_a, t_{a+1}, ..., t_{a+n-1},"`` built token by token from an
ordinal class (items with their leading space, one comma token after each): the model should
continue with ``t_{a+n}``. Its *shuffled* twin holds the same items in another order (the last
item differs and no two neighbours are in order), so the context no longer says "count on".

On the prompts the model gets right at top-1:

* **Direct logit attribution** (DLA): each head's output at the last position through the final
  norm (scale frozen at the clean run) onto ``W_U[successor] - W_U[last item]``, and the same
  for each layer's MLP output (``common.interp.direct_logit_attribution``,
  ``final_norm_linear``); ``DLA_shuffled`` is the same on the shuffled twins.
* **Activation patching** (``common.interp.activation_patching``, denoising): the shuffled
  prompt is run with one head's ``z`` (all positions) or one layer's ``mlp_out`` taken from the
  clean prompt; the metric ``logit[successor] - logit[last item]`` (of the clean prompt) is
  normalised so that clean = 1 and shuffled = 0: the fraction of the in-context succession that
  this component restores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from common.interp import (
    W_O,
    W_U,
    Intervention,
    Patch,
    activation_patching,
    direct_logit_attribution,
    final_norm_linear,
    logit_diff,
    run_with_cache,
)
from projects.successor_heads.tasks import OrdinalClass


@dataclasses.dataclass(frozen=True)
class ListPrompts:
    """List prompts of one class, all of one length.

    Attributes:
      name: class name.
      ids: ``[b, s]`` int32 clean prompts; shuffled: ``[b, s]`` their shuffled twins.
      answer: ``[b]`` the successor token; last: ``[b]`` the last item's token.
      n_items: items per prompt.
    """

    name: str
    ids: np.ndarray
    shuffled: np.ndarray
    answer: np.ndarray
    last: np.ndarray
    n_items: int

    def take(self, keep: np.ndarray) -> ListPrompts:
        return dataclasses.replace(self, ids=self.ids[keep], shuffled=self.shuffled[keep],
                                   answer=self.answer[keep], last=self.last[keep])

    def __len__(self) -> int:
        return len(self.answer)


def _chains(cls: OrdinalClass, length: int) -> list[list[int]]:
    """Runs of ``length`` consecutive item indices (following the class's pairs)."""
    nxt = dict(cls.pairs)
    out = []
    for start in range(len(cls.items)):
        chain = [start]
        while len(chain) < length and chain[-1] in nxt and nxt[chain[-1]] not in chain:
            chain.append(nxt[chain[-1]])
        if len(chain) == length:
            out.append(chain)
    return out


def _shuffle(order: list[int], rng: np.random.Generator, nxt: dict) -> list[int] | None:
    """A permutation of ``order`` whose last item differs and with no neighbours in order."""
    for _ in range(200):
        p = list(rng.permutation(order))
        if p[-1] != order[-1] and all(nxt.get(a) != b for a, b in zip(p, p[1:], strict=False)):
            return [int(x) for x in p]
    return None


def list_prompts(tokenizer, cls: OrdinalClass, *, n_items: int = 4, prefix: str = "List:",
                 max_prompts: int = 16, seed: int = 0) -> ListPrompts | None:
    """List prompts of ``cls`` with ``n_items`` items (fewer when the class is too short, at
    least 3); None when the class has no run of 4 consecutive items."""
    comma = tokenizer.encode(",")
    if len(comma) != 1:
        raise ValueError(f"list_prompts: ',' is {len(comma)} tokens in this tokenizer")
    head = list(tokenizer.encode(prefix))
    nxt = dict(cls.pairs)
    n = n_items
    while n >= 3 and not _chains(cls, n + 1):
        n -= 1
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    chains = _chains(cls, n + 1)
    chains = [chains[i] for i in sorted(rng.permutation(len(chains))[:max_prompts])]
    ids, shuf, ans, last = [], [], [], []
    for ch in chains:
        items = ch[:-1]
        perm = _shuffle(items, rng, nxt)
        if perm is None:
            continue
        seq = lambda order: head + [x for i in order for x in (cls.token_ids[i], comma[0])]  # noqa: E731
        ids.append(seq(items))
        shuf.append(seq(perm))
        ans.append(cls.token_ids[ch[-1]])
        last.append(cls.token_ids[items[-1]])
    if not ids:
        return None
    a = lambda v: np.asarray(v, np.int32)  # noqa: E731
    return ListPrompts(cls.name, a(ids), a(shuf), a(ans), a(last), n)


def evaluate(model, prompts: ListPrompts) -> dict[str, np.ndarray]:
    """``{"rank": [b], "top1": [b], "top3": [b], "logit_diff": [b]}`` of the successor at the
    last position of the clean prompts (rank 0 = top-1), and ``"shuffled_logit_diff"``."""
    lg = np.asarray(model(jnp.asarray(prompts.ids)))[:, -1]
    lg_s = np.asarray(model(jnp.asarray(prompts.shuffled)))[:, -1]
    b = np.arange(len(prompts))
    target = lg[b, prompts.answer]
    rank = (lg > target[:, None]).sum(-1)
    return {"rank": rank, "top1": rank == 0, "top3": rank < 3,
            "logit_diff": target - lg[b, prompts.last],
            "shuffled_logit_diff": lg_s[b, prompts.answer] - lg_s[b, prompts.last]}


def mlp_dla(model, ids: np.ndarray, answer: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """``[layer]`` direct logit attribution of each MLP output at the last position onto
    ``W_U[answer] - W_U[wrong]`` (final-norm scale frozen at the run), mean over the batch."""
    cfg = model.config
    _, cache = run_with_cache(model, jnp.asarray(ids), names_filter=("mlp_out", "resid_post"))
    final = cache["resid_post", cfg.n_layers - 1][:, -1]  # [b, d]
    mlp = cache.stack("mlp_out").values[:, :, -1]  # [L, b, d]
    wu = W_U(model).values
    direction = (wu[:, jnp.asarray(answer)] - wu[:, jnp.asarray(wrong)]).T  # [b, d]
    contrib = final_norm_linear(model, mlp, final)
    return np.asarray(jnp.einsum("lbd,bd->lb", contrib, direction).mean(-1))


def mlp_patching(model, clean: np.ndarray, corrupted: np.ndarray, answer, wrong) -> np.ndarray:
    """``[layer]`` denoising patch of each layer's ``mlp_out`` (all positions) from the clean
    run into the corrupted one; normalised (clean = 1, corrupted = 0)."""
    cfg = model.config
    metric = lambda lg: np.mean(  # noqa: E731
        lg[np.arange(len(answer)), -1, answer] - lg[np.arange(len(answer)), -1, wrong])
    c_ids, x_ids = jnp.asarray(clean), jnp.asarray(corrupted)
    m_clean, m_corr = metric(np.asarray(model(c_ids))), metric(np.asarray(model(x_ids)))
    _, cache = run_with_cache(model, c_ids, names_filter="mlp_out")
    src = cache.stack("mlp_out").values  # [L, b, s, d]
    out = np.zeros(cfg.n_layers)
    for layer in range(cfg.n_layers):
        patch = Patch(site="mlp_out", layers=jnp.asarray([layer], jnp.int32),
                      value=src[layer][None])
        lg = np.asarray(model(x_ids, intervention=Intervention(patches=(patch,))))
        out[layer] = (metric(lg) - m_corr) / (m_clean - m_corr)
    return out


@dataclasses.dataclass
class InContextResult:
    """Per class: accuracy counts; pooled over the kept prompts: DLA and patching.

    Attributes:
      accuracy: ``{class: {"prompts", "top1", "top3", "n_items", "logit_diff",
        "shuffled_logit_diff"}}``.
      dla_heads, dla_heads_shuffled: ``[L, H]`` mean DLA over the kept prompts (clean,
        shuffled twin); dla_mlp: ``[L]``.
      patch_heads: ``[L, H]``, patch_mlp ``[L]``: fraction restored (pooled over classes,
        weighted by their prompt counts); None when not run.
      n_kept: prompts used (top-1 correct).
      per_class: ``{class: {"dla_heads", "dla_mlp"[, "patch_heads", "patch_mlp",
        "patch_prompts", "patch_clean", "patch_corrupted"]}}``.
    """

    accuracy: dict
    dla_heads: np.ndarray
    dla_heads_shuffled: np.ndarray
    dla_mlp: np.ndarray
    patch_heads: np.ndarray | None
    patch_mlp: np.ndarray | None
    n_kept: int
    per_class: dict


def run_in_context(model, tokenizer, classes: Sequence[OrdinalClass], *, n_items: int = 4,
                   max_prompts: int = 16, patch: bool = True, patch_prompts: int = 8,
                   patch_classes: Sequence[str] | None = None, seed: int = 0,
                   progress=None) -> InContextResult:
    """Evaluate list prompts of every class; DLA and (optionally) activation patching on the
    kept ones (of the classes in ``patch_classes``; None: all).

    ``progress``: optional ``bar``-like wrapper of the class loop.
    """
    cfg = model.config
    acc, per_class = {}, {}
    w_sum = 0
    dla_h = np.zeros((cfg.n_layers, cfg.n_heads))
    dla_hs = np.zeros_like(dla_h)
    dla_m = np.zeros(cfg.n_layers)
    p_h = np.zeros_like(dla_h)
    p_m = np.zeros(cfg.n_layers)
    p_w = 0
    loop = progress(classes) if progress else classes
    for cls in loop:
        lp = list_prompts(tokenizer, cls, n_items=n_items, max_prompts=max_prompts, seed=seed)
        if lp is None:
            acc[cls.name] = {"prompts": 0, "top1": 0, "top3": 0, "n_items": 0,
                             "note": "no run of 4 consecutive single-token items"}
            continue
        ev = evaluate(model, lp)
        acc[cls.name] = {"prompts": len(lp), "top1": int(ev["top1"].sum()),
                         "top3": int(ev["top3"].sum()), "n_items": lp.n_items,
                         "logit_diff": float(ev["logit_diff"].mean()),
                         "shuffled_logit_diff": float(ev["shuffled_logit_diff"].mean())}
        keep = np.flatnonzero(ev["top1"])
        if len(keep) == 0:
            continue
        k = lp.take(keep)
        d = np.asarray(direct_logit_attribution(model, jnp.asarray(k.ids), jnp.asarray(k.answer),
                                                jnp.asarray(k.last)))
        ds = np.asarray(direct_logit_attribution(model, jnp.asarray(k.shuffled),
                                                 jnp.asarray(k.answer), jnp.asarray(k.last)))
        dm = mlp_dla(model, k.ids, k.answer, k.last)
        n = len(k)
        per_class[cls.name] = {"dla_heads": d, "dla_mlp": dm, "_n": n}
        dla_h += n * d
        dla_hs += n * ds
        dla_m += n * dm
        w_sum += n
        if patch and (patch_classes is None or cls.name in patch_classes):
            kp = k.take(np.arange(min(n, patch_prompts)))
            gap = float(np.mean(ev["logit_diff"][keep][:len(kp)]
                                - ev["shuffled_logit_diff"][keep][:len(kp)]))
            if gap <= 0.5:  # shuffling does not lower the metric: nothing to restore
                per_class[cls.name]["patch_skipped"] = f"clean - shuffled gap {gap:.2f} <= 0.5"
                continue
            metric = logit_diff(jnp.asarray(kp.answer), jnp.asarray(kp.last))
            r = activation_patching(model, jnp.asarray(kp.ids), jnp.asarray(kp.shuffled), metric,
                                    normalize=True)
            ph = np.asarray(r.values)
            pm = mlp_patching(model, kp.ids, kp.shuffled, kp.answer, kp.last)
            per_class[cls.name].update(patch_heads=ph, patch_mlp=pm, patch_prompts=len(kp),
                                       patch_clean=float(r.clean),
                                       patch_corrupted=float(r.corrupted))
            p_h += len(kp) * ph
            p_m += len(kp) * pm
            p_w += len(kp)
    if w_sum == 0:
        raise ValueError("run_in_context: the model got no list prompt right at top-1")
    for v in per_class.values():
        v["n_kept"] = int(v.pop("_n"))
    return InContextResult(
        accuracy=acc, dla_heads=dla_h / w_sum, dla_heads_shuffled=dla_hs / w_sum,
        dla_mlp=dla_m / w_sum, patch_heads=p_h / p_w if p_w else None,
        patch_mlp=p_m / p_w if p_w else None, n_kept=w_sum, per_class=per_class)


def _top(a: np.ndarray, k: int, sign: float = 1.0) -> list[list]:
    order = np.argsort(-sign * a.ravel(), kind="stable")[:k]
    return [[int(i // a.shape[1]), int(i % a.shape[1]), round(float(a.ravel()[i]), 4)]
            for i in order]


def summarize(r: InContextResult, k: int, weight_scores=None) -> dict:
    """JSON-able summary: accuracy per class, top heads by DLA and by patching (with the
    weight-based succession score of each head beside it when ``weight_scores`` is given), the
    MLP layers, and the per-class top heads."""
    ws = None if weight_scores is None else np.asarray(weight_scores.succession)
    cs = None if weight_scores is None else np.asarray(weight_scores.copy)

    def annotate(rows):
        if ws is None:
            return rows
        return [row + [round(float(ws[row[0], row[1]]), 4), round(float(cs[row[0], row[1]]), 4)]
                for row in rows]

    acc = r.accuracy
    out = {
        "prompts": int(sum(a["prompts"] for a in acc.values())),
        "top1": int(sum(a["top1"] for a in acc.values())),
        "top3": int(sum(a["top3"] for a in acc.values())),
        "accuracy": acc,
        "n_kept": r.n_kept,
        "top_dla_heads": annotate(_top(r.dla_heads, k)),
        "top_dla_heads_shuffled": _top(r.dla_heads_shuffled, k),
        "most_negative_dla_heads": _top(r.dla_heads, 3, sign=-1.0),
        "dla_mlp": np.round(r.dla_mlp, 4).tolist(),
        "dla_heads_total": round(float(r.dla_heads.sum()), 4),
        "dla_mlp_total": round(float(r.dla_mlp.sum()), 4),
        "top_dla_mlp_layers": [[int(i), round(float(r.dla_mlp[i]), 4)]
                               for i in np.argsort(-r.dla_mlp)[:5]],
        "row_columns": "[layer, head, value, weight succession score, weight copy score]",
        "per_class_top_dla": {n: _top(v["dla_heads"], 3) for n, v in r.per_class.items()},
    }
    if r.patch_heads is not None:
        out["top_patch_heads"] = annotate(_top(r.patch_heads, k))
        out["patch_mlp"] = np.round(r.patch_mlp, 4).tolist()
        out["top_patch_mlp_layers"] = [[int(i), round(float(r.patch_mlp[i]), 4)]
                                       for i in np.argsort(-r.patch_mlp)[:5]]
        out["per_class_patch"] = {
            n: {"prompts": v["patch_prompts"], "clean": round(v["patch_clean"], 3),
                "shuffled": round(v["patch_corrupted"], 3),
                "top_heads": _top(v["patch_heads"], 3)}
            for n, v in r.per_class.items() if "patch_heads" in v}
        out["patch_skipped"] = {n: v["patch_skipped"] for n, v in r.per_class.items()
                                if "patch_skipped" in v}
    return out


def contextual_ov_logits(model, tokenizer, table, classes: Sequence[OrdinalClass], *,
                         n_context: int = 2, prefix: str = "List:") -> np.ndarray:
    """Effective OV logits with the *in-context* input (spec §12 step 4): ``[L, H, m, m]``.

    Row ``t`` of head (l, h) is ``N_f(v^{l}_{kv(h)}[t] W_O^{l,h}) W_U`` over the table's
    tokens, where ``v`` is the head's value vector (its own input norm included: the captured
    ``v`` site) at the position of ``t`` in the list prompt ``prefix t_{i-n}, ..., t_{i-1}, t,``
    (as many predecessors as the class has, up to ``n_context``). Rows of tokens without a
    prompt are ``-inf``. Scored with :func:`~projects.successor_heads.succession.
    scores_from_logits`, this asks whether a head increments the representation it actually
    reads in context rather than MLP0 of the raw embedding.
    """
    cfg = model.config
    comma = tokenizer.encode(",")[0]
    head = list(tokenizer.encode(prefix))
    col = {int(t): i for i, t in enumerate(table.tokens)}
    prompts: dict[int, list[int]] = {}
    for cls in classes:
        prev = {j: i for i, j in cls.pairs}
        for k, t in enumerate(cls.token_ids):
            chain = [k]
            while len(chain) <= n_context and chain[0] in prev and prev[chain[0]] not in chain:
                chain.insert(0, prev[chain[0]])
            ids = head + [x for i in chain for x in (cls.token_ids[i], comma)]
            prompts.setdefault(len(ids), []).append((col[t], ids))
    m = len(table.tokens)
    out = np.full((cfg.n_layers, cfg.n_heads, m, m), -np.inf, np.float32)
    wo = W_O(model).values  # [L, H, k, d]
    wu = W_U(model).values[:, jnp.asarray(table.tokens)]
    group = cfg.n_heads // cfg.n_kv_heads
    for length, rows in prompts.items():
        ids = jnp.asarray([r[1] for r in rows], jnp.int32)
        _, cache = run_with_cache(model, ids, names_filter=("v", "resid_post"))
        v = cache.stack("v").values[:, :, length - 2]  # [L, b, K, k] at the item
        v = jnp.repeat(v, group, axis=2)  # [L, b, H, k]
        y = jnp.einsum("lbhk,lhkd->lhbd", v, wo)
        normed = final_norm_linear(model, y, y)
        bias = model.unembed(jnp.zeros((cfg.d_model,), y.dtype))[jnp.asarray(table.tokens)]
        lg = np.asarray(jnp.einsum("lhbd,dn->lhbn", normed, wu) + bias)
        for b, (r, _) in enumerate(rows):
            out[:, :, r] = lg[:, :, b]
    return out

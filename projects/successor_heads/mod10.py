"""Mod-10 features (paper §3.2-§3.4, spec §7-§8): SAEs on the effective embeddings of number
tokens, the features of each units digit, and vector arithmetic with them in the residual stream.

Tokens (spec §7): numbers 0-500 with and without a leading space, number words one-twenty and
ordinal words first-tenth (with a space, bare, and Capitalised), each kept only when it is one
token, with its *value* (``" seventh"`` -> 7) and residue ``value mod 10``. For SmolLM2 the
numbers are the ten bare digits (the tokenizer splits every number into digits), so mod 10 is
the digit itself; the words carry the rest.

SAEs (``common.interp.sae``; many seeds x λ as one population on ``common.train``) are trained
on the effective embeddings (the scan's ``embed_mode``) divided by one global scale (the RMS
coordinate), split 90/10 into train and validation. For each residue ``r`` the modal feature
``f_r`` is the one most often top-activating on the tokens with residue ``r``; its *coverage*
is that fraction (the paper: 58.5% on average).

Vector arithmetic (an intervention): on a list prompt ending with an item of value ``v``
(residue ``a``), add ``k·(s_b f_b - s_a f_a)`` (``s_c`` the mean activation of ``f_c`` on its
tokens, times the global scale) to the residual stream entering layer 1 at the last item's
position. The edit *succeeds* when the model's top candidate of the class is now the successor
of ``v' = v - a + b`` (the item with the same tens and units digit ``b``). A random direction of
the same norm is the control.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.interp import Intervention, Patch, run_with_cache
from common.interp import sae as sae_lib
from projects.successor_heads.succession import effective_embed
from projects.successor_heads.tasks import NUMBER_WORDS, ORDINAL_WORDS, OrdinalClass

DOMAINS = ("numbers", "number_words", "ordinal_words")


@dataclasses.dataclass(frozen=True)
class NumericTokens:
    """Single-token numeric items: ``text [n]``, ``ids [n]``, ``value [n]``, ``domain [n]``."""

    text: tuple[str, ...]
    ids: np.ndarray
    value: np.ndarray
    domain: np.ndarray

    @property
    def residue(self) -> np.ndarray:
        return self.value % 10


def numeric_tokens(tokenizer, max_number: int = 500) -> NumericTokens:
    """Numbers ``0..max_number`` (with / without a space), number and ordinal words (space,
    bare, Capitalised), keeping single tokens; a token met twice is kept once."""
    spellings: list[tuple[str, int, int]] = []
    for n in range(max_number + 1):
        spellings += [(f" {n}", n, 0), (str(n), n, 0)]
    for words, dom in ((NUMBER_WORDS, 1), (ORDINAL_WORDS, 2)):
        for i, w in enumerate(words, start=1):
            spellings += [(" " + w, i, dom), (w, i, dom), (" " + w.capitalize(), i, dom)]
    seen, text, ids, val, dom = set(), [], [], [], []
    for s, v, d in spellings:
        t = tokenizer.encode(s)
        if len(t) == 1 and t[0] not in seen:
            seen.add(t[0])
            text.append(s)
            ids.append(t[0])
            val.append(v)
            dom.append(d)
    if len(set(np.asarray(val) % 10)) < 10:
        raise ValueError("numeric_tokens: the tokenizer has single tokens for fewer than ten "
                         "units digits; the mod-10 analysis needs all ten")
    return NumericTokens(tuple(text), np.asarray(ids, np.int32), np.asarray(val),
                         np.asarray(dom))


@dataclasses.dataclass
class SAERuns:
    """SAEs trained together: ``params`` leaves ``[M, ...]``; per run ``l1``, ``seed``, ``fvu``
    (validation fraction of variance unexplained) and ``l0`` (mean active features)."""

    params: dict
    l1: np.ndarray
    seed: np.ndarray
    fvu: np.ndarray
    l0: np.ndarray

    def run(self, m: int) -> dict:
        return jax.tree.map(lambda a: a[m], self.params)

    def __len__(self) -> int:
        return len(self.l1)


def _pure(tree) -> dict:
    from flax import nnx

    try:
        return nnx.to_pure_dict(tree)
    except Exception:  # noqa: BLE001 - already a plain dict
        return tree


def train_saes(x_train: np.ndarray, x_eval: np.ndarray, *, dict_size: int,
               l1: Sequence[float], seeds: Sequence[int], steps: int, lr: float = 1e-3,
               tied: bool = False, workdir: str | pathlib.Path, log_every: int = 100,
               metrics=None, progress: bool = True) -> SAERuns:
    """One SAE per ``(λ, seed)`` on ``x_train [n, d]`` (full batch each step), trained as one
    population on :func:`common.train.train` (Adam ``lr``; no checkpoints: seconds).

    Returns:
      :class:`SAERuns` in ``(λ, seed)`` order, FVU and L0 measured on ``x_eval``.
    """
    from common.sharding import make_mesh
    from common.train import Group, Population, Task, TrainConfig
    from common.train import train as train_loop

    x_train = jnp.asarray(x_train, jnp.float32)
    x_eval = jnp.asarray(x_eval, jnp.float32)
    if x_train.ndim != 2 or x_eval.ndim != 2 or x_train.shape[1] != x_eval.shape[1]:
        raise ValueError(f"train_saes: x_train {x_train.shape} and x_eval {x_eval.shape} must "
                         "be [n, d] with the same d")
    if steps % log_every:
        raise ValueError(f"train_saes: steps ({steps}) must be a multiple of log_every "
                         f"({log_every})")
    combos = [(float(a), int(s)) for a in l1 for s in seeds]
    d, mean, M = x_train.shape[1], x_train.mean(0), len(combos)
    lam = jnp.asarray([a for a, _ in combos], jnp.float32)
    group = Group(
        "sae", tuple(f"sae_l1={a:g}_seed={s}" for a, s in combos),
        init=lambda m: sae_lib.init_sae(jax.random.key(combos[m][1]), d, dict_size, tied=tied,
                                        b_dec=mean),
        loss=lambda p, batch: sae_lib.sae_loss(p, batch["x"], batch["l1"]), data="sae",
        labels=tuple({"l1": a, "seed": s} for a, s in combos))

    def device_data(step):
        del step
        return {"sae": {"x": jnp.broadcast_to(x_train, (M,) + x_train.shape), "l1": lam}}

    tc = TrainConfig(steps=steps, log_every=log_every, checkpoint_every=0,
                     steps_per_call=log_every, progress=progress)
    res = train_loop(Task.for_population(Population((group,)), device_data), optax.adam(lr),
                     None, tc, make_mesh(), workdir, metrics=metrics)
    params = {k: jnp.asarray(v) for k, v in _pure(jax.device_get(res.state.params))["sae"].items()}
    f = jax.vmap(sae_lib.fvu, in_axes=(0, None))(params, x_eval)
    l0 = jax.vmap(lambda p: jnp.mean(jnp.sum(sae_lib.encode(p, x_eval) > 0, -1)))(params)
    return SAERuns(params, np.asarray([a for a, _ in combos]),
                   np.asarray([s for _, s in combos]), np.asarray(f), np.asarray(l0))


@dataclasses.dataclass
class Mod10Result:
    """What the mod-10 stage found.

    Attributes:
      tokens: the :class:`NumericTokens`; scale: the global input scale.
      runs: the trained :class:`SAERuns`; best: the run with the highest mean coverage.
      features: ``[M, 10]`` modal feature per run and residue; coverage ``[M, 10]``.
      acts: ``[n, 10]`` activations of the best run's ``f_0..f_9`` on every token.
      directions: ``[10, d_model]`` unit decoder rows ``f_r`` of the best run;
      magnitude: ``[10]`` ``s_r`` in residual units (mean activation x scale).
    """

    tokens: NumericTokens
    scale: float
    runs: SAERuns
    best: int
    features: np.ndarray
    coverage: np.ndarray
    acts: np.ndarray
    directions: np.ndarray
    magnitude: np.ndarray

    def summary(self) -> dict:
        cov = self.coverage
        return {"n_tokens": len(self.tokens.ids), "tokens": list(self.tokens.text),
                "n_saes": len(self.runs), "l1": sorted(set(self.runs.l1.tolist())),
                "fvu_val": {"mean": float(self.runs.fvu.mean()),
                            "min": float(self.runs.fvu.min())},
                "l0_val_mean": float(self.runs.l0.mean()),
                "coverage_mean": float(cov.mean()),
                "coverage_per_residue_mean": cov.mean(0).tolist(),
                "best_run": {"index": self.best, "l1": float(self.runs.l1[self.best]),
                             "seed": int(self.runs.seed[self.best]),
                             "coverage": cov[self.best].tolist(),
                             "features": self.features[self.best].tolist(),
                             "distinct_features": int(len(set(self.features[self.best])))}}


def mod10_features(model, tokenizer, *, embed_mode: str, dict_mult: float, l1: Sequence[float],
                   seeds: Sequence[int], steps: int, lr: float, tied: bool, max_number: int,
                   workdir: pathlib.Path, metrics=None, progress: bool = True,
                   split_seed: int = 0) -> Mod10Result:
    """Train the SAEs on the numeric tokens' effective embeddings and find ``f_0 .. f_9``."""
    toks = numeric_tokens(tokenizer, max_number)
    x = np.asarray(effective_embed(model, toks.ids, embed_mode), np.float64)
    scale = float(np.sqrt(np.mean(x ** 2)))
    xs = (x / scale).astype(np.float32)
    perm = np.random.default_rng(split_seed).permutation(len(xs))
    n_val = max(1, len(xs) // 10)
    val, train = perm[:n_val], perm[n_val:]
    runs = train_saes(xs[train], xs[val], dict_size=int(round(dict_mult * x.shape[1])), l1=l1,
                      seeds=seeds, steps=steps, lr=lr, tied=tied, workdir=workdir,
                      log_every=min(steps, 250), metrics=metrics, progress=progress)
    res = toks.residue
    feats, covs = [], []
    for m in range(len(runs)):
        h = np.asarray(sae_lib.encode(runs.run(m), jnp.asarray(xs)))
        f, c = sae_lib.modal_features(h, res, 10)
        feats.append(f)
        covs.append(c)
    feats, covs = np.asarray(feats), np.asarray(covs)
    best = int(np.argmax(covs.mean(1) - 1e-6 * runs.fvu))
    p = runs.run(best)
    h = np.asarray(sae_lib.encode(p, jnp.asarray(xs)))
    fb = feats[best]
    acts = np.where(fb[None] >= 0, h[:, np.maximum(fb, 0)], 0.0)  # [n, 10]
    dirs = np.asarray(sae_lib.decoder(p))[np.maximum(fb, 0)]
    mag = np.array([acts[res == r, r][acts[res == r, r] > 0].mean()
                    if (acts[res == r, r] > 0).any() else 0.0 for r in range(10)]) * scale
    return Mod10Result(toks, scale, runs, best, feats, covs, acts, dirs, mag)


# ------------------------------------------------------------------------ vector arithmetic

def _value_of(cls: OrdinalClass) -> dict[int, int] | None:
    """Item index -> numeric value for the numeric classes, else None."""
    base = cls.name.split("/")[0]
    if base == "numbers":
        return {i: int(t.strip()) for i, t in enumerate(cls.items)}
    words = {"number_words": NUMBER_WORDS, "ordinal_words": ORDINAL_WORDS}.get(base)
    if words is None:
        return None
    lut = {w: k for k, w in enumerate(words, start=1)}
    return {i: lut[t.strip()] for i, t in enumerate(cls.items)}


@dataclasses.dataclass
class ArithmeticResult:
    """Success of the mod-10 edits: ``rows`` one dict per edit (class, value, a, b, k,
    success, control_success), and the rates."""

    rows: list[dict]

    def rate(self, key: str = "success", **where) -> float:
        sel = [r[key] for r in self.rows if all(r[k] == v for k, v in where.items())]
        return float(np.mean(sel)) if sel else float("nan")

    def grid(self, k: float) -> np.ndarray:
        """``[10, 10]`` success rate by (source residue a, target residue b) at scale k."""
        g = np.full((10, 10), np.nan)
        for a in range(10):
            for b in range(10):
                sel = [r["success"] for r in self.rows if (r["a"], r["b"], r["k"]) == (a, b, k)]
                if sel:
                    g[a, b] = np.mean(sel)
        return g


def vector_arithmetic(model, tokenizer, classes: Sequence[OrdinalClass], m10: Mod10Result, *,
                      ks: Sequence[float], n_items: int = 3, prefix: str = "List:",
                      layer: int = 1, seed: int = 0, max_batch: int = 256) -> ArithmeticResult:
    """Edit the units-digit feature of the last item of numeric list prompts (module
    docstring); one batched forward per chunk of edits."""
    comma = tokenizer.encode(",")
    head = list(tokenizer.encode(prefix))
    rng = np.random.default_rng(seed)
    d = model.config.d_model
    jobs = []  # (ids, cls, v, a, b, k, candidates, target, delta, control_delta)
    for cls in classes:
        val = _value_of(cls)
        if val is None or cls.held_out:
            continue
        by_val = {v: i for i, v in val.items()}
        cands = np.asarray(cls.token_ids)
        for v in val.values():
            ctx = [by_val.get(v - j) for j in range(n_items - 1, -1, -1)]
            if any(c is None for c in ctx):
                continue
            ids = head + [x for c in ctx for x in (cls.token_ids[c], comma[0])]
            a = v % 10
            for b in range(10):
                vt = v - a + b
                if b == a or vt not in by_val or vt + 1 not in by_val:
                    continue
                target = cls.token_ids[by_val[vt + 1]]
                for k in ks:
                    delta = k * (m10.magnitude[b] * m10.directions[b]
                                 - m10.magnitude[a] * m10.directions[a])
                    r = rng.standard_normal(d)
                    ctrl = r / np.linalg.norm(r) * np.linalg.norm(delta)
                    jobs.append((ids, cls.name, v, a, b, float(k), cands, target, delta, ctrl))
    rows = []
    for start in range(0, len(jobs), max_batch):
        chunk = jobs[start:start + max_batch]
        by_len: dict[int, list] = {}
        for j in chunk:
            by_len.setdefault(len(j[0]), []).append(j)
        for group in by_len.values():
            ids = jnp.asarray([j[0] for j in group], jnp.int32)
            _, cache = run_with_cache(model, ids, names_filter="resid_pre", layers=[layer])
            base = cache["resid_pre", layer]  # [b, s, d]
            pos = ids.shape[1] - 2  # the last item (the comma follows it)
            succ = []
            for which in (8, 9):
                dl = jnp.asarray(np.stack([j[which] for j in group]), base.dtype)
                edited = base.at[:, pos].add(dl)
                patch = Patch(site="resid_pre", layers=jnp.asarray([layer], jnp.int32),
                              value=edited[None])
                lg = np.asarray(model(ids, intervention=Intervention(patches=(patch,))))[:, -1]
                succ.append([int(j[6][np.argmax(lg[n, j[6]])] == j[7])
                             for n, j in enumerate(group)])
            for n, j in enumerate(group):
                rows.append({"class": j[1], "value": j[2], "a": j[3], "b": j[4], "k": j[5],
                             "success": succ[0][n], "control_success": succ[1][n]})
    return ArithmeticResult(rows)

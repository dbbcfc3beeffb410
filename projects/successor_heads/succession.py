"""Succession scores of every attention head from the weights alone (spec §3-§4).

Notation (paper and spec): ``W_E [vocab, d_model]`` the embedding; ``MLP0`` layer 0's MLP;
``W_OV^{l,h} = W_V^{l,h} W_O^{l,h}`` the OV map of head ``(l, h)`` (``W_V`` of a grouped-query
model is that of the KV head ``h // group``, as Hugging Face's ``repeat_kv``); ``W_U [d_model,
vocab]`` the unembedding. The *effective OV logits* of head (l, h) on tokens ``t_1..t_m`` are

    logits[l, h, i, j] = ( N_f( E_eff[t_i] · W_OV^{l,h} ) · W_U )[t_j]        [L, H, m, m]

with ``E_eff`` the effective embedding (``embed_mode``) and ``N_f`` the final norm (on by default
as issue 14 asks; off is the derivative code's choice). Within an ordinal class the *succession
score* counts a pair (t_i, t_{i+1}) as a success when ``t_{i+1}`` has the largest logit among the
class's tokens in row ``t_i`` (ties count, as in the derivative); a head's score is the mean over
all pairs of all classes except the held-out ones (pooled: every pair weighs the same), and
chance is the mean of ``1 / |class|`` over those pairs. The copy score (row ``t_i``'s argmax is
``t_i``) is the positive control; the predecessor score asks for ``t_{i-1}``.

Every head of the model is scored in one jitted program (``[L, H, m, d_model]`` products, no
forward pass): SmolLM2's 270 heads in well under a second after compilation.

Effective embeddings (``embed_mode``):

* ``mlp0_only`` (default, the derivative's ``blocks[0].mlp(W_E)``): ``MLP0(N_2(W_E))``, the
  MLP of layer 0 on the raw token embedding, attention skipped and no residual. For a pre-norm
  model the MLP module is applied after its own input norm ``N_2`` (RMSNorm / LayerNorm of layer
  0): headlab includes it (the SwiGLU of a Llama model is not meant to see un-normed inputs);
  the derivative applied GPT-2's MLP without ``ln_2``.
* ``resid_plus_mlp0``: ``W_E + MLP0(N_2(W_E))`` (the residual after layer 0 without attention).
* ``raw_embed``: ``W_E``.
* ``block0``: block 0 on each token as a one-token sequence (attention then reads the token).

The head's input norm (``ln_1`` of layer l) is not applied, as in the derivative.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.interp import W_E, W_O, W_U, Labelled, effective_embedding
from projects.successor_heads.tasks import OrdinalClass

EMBED_MODES = ("mlp0_only", "resid_plus_mlp0", "raw_embed", "block0")
_MLP0_MODES = ("mlp0_only", "resid_plus_mlp0", "block0")


class NoMLP0Error(ValueError):
    """The model has no MLP in layer 0, so an ``mlp0`` effective embedding is undefined."""


def has_mlp0(config) -> bool:
    """Whether layer 0 has an MLP (headlab's ``DecoderLM`` always does; ``d_mlp`` 0 or a
    ``mlp_layers`` list without 0 in a foreign config means not)."""
    layers = getattr(config, "mlp_layers", None)
    if layers is not None and 0 not in layers:
        return False
    return int(getattr(config, "d_mlp", 0) or 0) > 0


def resolve_embed_mode(config, mode: str, fallback: str | None = None) -> str:
    """``mode`` if the model supports it; ``fallback`` (e.g. ``"raw_embed"``) for a model
    without an MLP in layer 0, else :class:`NoMLP0Error`."""
    if mode not in EMBED_MODES:
        raise ValueError(f"embed_mode must be one of {EMBED_MODES}, got {mode!r}")
    if mode in _MLP0_MODES and not has_mlp0(config):
        if fallback is None:
            raise NoMLP0Error(f"embed_mode {mode!r} needs an MLP in layer 0 and this model has "
                              "none; use embed_mode='raw_embed' (or set embed_fallback)")
        return resolve_embed_mode(config, fallback)
    return mode


def effective_embed(model, token_ids: jax.Array, mode: str = "mlp0_only") -> jax.Array:
    """Effective embeddings ``[m, d_model]`` of ``token_ids [m]`` (module docstring)."""
    mode = resolve_embed_mode(model.config, mode)
    ids = jnp.asarray(token_ids, jnp.int32)
    if mode == "raw_embed":
        return W_E(model).values[ids]
    if mode == "block0":
        return effective_embedding(model, ids, mode="block0")
    resid = effective_embedding(model, ids, mode="mlp0")  # W_E + MLP0(N_2(W_E))
    if mode == "resid_plus_mlp0":
        return resid
    return resid - W_E(model).values[ids]


def _values(model, x: jax.Array, one_product: bool = False) -> jax.Array:
    """``A = E_eff W_V`` of every KV head, ``[L, m, kv_heads, d_head]`` for ``x [m, d]``.

    By default one batched product over the stacked ``W_V``, read in place (its sharding over
    ``embed`` and ``kv_heads`` carries through). ``one_product``: a single ``[m, d] @ [d, L·K·k]``
    product on ``W_V`` with its layer axis moved next to the heads, a transposed copy of the
    stacked kernel (13 MB for SmolLM2): XLA:CPU multiplies that at ~310 GFLOP/s against ~235
    for the 30 batched ``[m, d] @ [d, K·k]`` products, 2.6 against 3.3 ms with the copy."""
    cfg = model.config
    L, d, m = cfg.n_layers, cfg.d_model, x.shape[0]
    if one_product:
        wv = jnp.moveaxis(model.blocks.attn.v_kernel[...], 0, 1)  # [d, L, K, k]
        a = x @ wv.reshape(d, -1)  # [m, L·K·k]
        return jnp.moveaxis(a.reshape(m, L, cfg.n_kv_heads, cfg.d_head), 0, 1)
    wv = model.blocks.attn.v_kernel[...]  # [L, d, K, k]
    a = jnp.einsum("lmd,ldj->lmj", jnp.broadcast_to(x, (L, *x.shape)), wv.reshape(L, d, -1))
    return a.reshape(L, m, cfg.n_kv_heads, cfg.d_head)


def _scored_unembed(model, ids: jax.Array, final_norm: bool) -> jax.Array:
    """``W_U`` on the scored tokens ``ids [n]`` only, ``[d, n]`` (rows of a tied embedding,
    not the transposed table), with the final norm's scale γ (and LayerNorm's centring)
    applied: ``((y C) ⊙ γ) W_U = y · C (γ ⊙ W_U)``."""
    wu = (model.embed.embedding[...][ids].T if model.lm_head is None
          else W_U(model).values[:, ids])
    if not final_norm:
        return wu
    wu = model.final_norm.scale[...].astype(wu.dtype)[:, None] * wu
    return wu if model.config.norm == "rms" else wu - wu.mean(axis=0, keepdims=True)


def _norm_terms(model, a: jax.Array, wo: jax.Array, ids: jax.Array):
    """The final norm's per-row divisor ``r = 1/sqrt(mean(y_c²) + eps)`` of ``y = a W_O``,
    ``[L, H, n]`` for ``a [L, H, n, d_head]``, from the Gram matrix ``W_O W_Oᵀ`` (``y_c = y``
    centred for LayerNorm; ``y [L, H, n, d_model]`` is never formed), and the norm's bias
    through ``W_U`` on ``ids [n]``, ``[n]``."""
    cfg = model.config
    d = cfg.d_model
    wo_c = wo if cfg.norm == "rms" else wo - wo.mean(-1, keepdims=True)
    gram = jnp.einsum("lhkd,lhjd->lhkj", wo_c, wo_c)  # [L, H, k, k]
    ms = jnp.einsum("lhmk,lhkj,lhmj->lhm", a, gram, a) / d  # mean(y_c²) per row
    bias = model.unembed(jnp.zeros((d,), wo.dtype))[ids]
    return jax.lax.rsqrt(ms + cfg.norm_eps), bias


def _ov_parts(model, token_ids: jax.Array, embed_mode: str, final_norm: bool, exact: bool):
    """The factors of the effective OV logits: ``logits = (A @ M) * r[..., None] + b`` with
    ``A [L, H, m, d_head]``, ``M [L, H, d_head, m]``, the final norm's per-row divisor
    ``r [L, H, m]`` and its bias through ``W_U`` ``b [m]`` (``None`` when absent or, with
    ``exact=False``, when it changes no ranking: an RMSNorm has no bias, so each row is only
    scaled by ``r > 0``).

    Contracted in the cheap order: ``A = E_eff W_V`` per KV head (:func:`_values`) and ``M =
    W_O^{l,h} (γ ⊙ W_U)`` (:func:`_scored_unembed`: γ and LayerNorm's centring applied to
    the ``m`` scored columns of ``W_U`` rather than to every head's ``W_O``); ``r`` and ``b``
    from :func:`_norm_terms`.
    """
    cfg = model.config
    ids = jnp.asarray(token_ids, jnp.int32)
    group = cfg.n_heads // cfg.n_kv_heads
    a = _values(model, effective_embed(model, ids, embed_mode))  # [L, m, K, k]
    a = jnp.repeat(jnp.moveaxis(a, 2, 1), group, axis=1)  # [L, H, m, k]
    wo = W_O(model).values  # [L, H, k, d]
    m = jnp.einsum("lhkd,dn->lhkn", wo, _scored_unembed(model, ids, final_norm))
    if not final_norm or (not exact and cfg.norm == "rms"):
        return a, m, None, None
    return (a, m, *_norm_terms(model, a, wo, ids))


def _ov_logits(model, token_ids: jax.Array, embed_mode: str, final_norm: bool,
               exact: bool = True) -> jax.Array:
    """``[L, H, m, m]`` effective OV logits (rows: input token, columns: output token), from
    :func:`_ov_parts` (``exact=False``: ranking-equivalent, see there)."""
    a, m, r, b = _ov_parts(model, token_ids, embed_mode, final_norm, exact)
    logits = jnp.einsum("lhmk,lhkn->lhmn", a, m)
    if r is not None:
        logits = logits * r[..., None]
    return logits if b is None else logits + b


def _ov_blocks(model, token_ids: jax.Array, order: jax.Array, sizes: Sequence[int],
               embed_mode: str, final_norm: bool, cpu: bool = False) -> list[jax.Array]:
    """The class blocks of the effective OV logits, one per class: ``[L, kv_heads, n_c, group,
    n_c]`` for class ``c``, entry ``[l, j, r, g, s]`` being ``logits[l, j·group + g, cls_c[r],
    cls_c[s]]`` for the columns ``cls_c = order[o_c : o_c + n_c]`` of class ``c`` (``order
    [S]``: the classes' token columns concatenated, padded at the end; ``o_c`` the running sum
    of ``sizes``); ranking-equivalent as ``exact=False``. Only these entries decide a
    succession score, so the ``m x m`` table is never formed (``Σ n_c²`` entries instead of
    ``m²``).

    Contracted in the cheap order with the layout XLA:CPU multiplies fastest: ``A = E_eff W_V``
    on the class rows as :func:`_values` (one product with ``cpu``), ``M = W_O (γ ⊙ W_U[:,
    order])`` as one ``[L·H·k, d] @ [d, S]`` product over every head (``S`` padded to a
    multiple of 16: 8.9 -> 6.8 ms at SmolLM2's 118 -> 128 columns), and per class one ``[n_c,
    k] @ [k, group·n_c]`` product per KV head (the heads that share a ``W_V``), left in that
    product's layout (the heads of a group side by side in each row) for
    :func:`_score_blocks`: transposing and concatenating the blocks cost more than the
    products (15.5 -> 14.2 ms per call for SmolLM2).
    """
    cfg = model.config
    L, K, k, d = cfg.n_layers, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    group = cfg.n_heads // K
    ids = jnp.asarray(token_ids, jnp.int32)
    n_used = int(sum(sizes))
    cols = ids[order]  # [S] the scored tokens, class after class
    rows = effective_embed(model, ids, embed_mode)[order[:n_used]]  # [Σ n_c, d]
    a = _values(model, rows, one_product=cpu).transpose(0, 2, 1, 3)  # [L, K, Σ n_c, k]
    wo = W_O(model).values  # [L, H, k, d]
    m = (wo.reshape(-1, d) @ _scored_unembed(model, cols, final_norm)).reshape(
        L, K, group, k, -1)  # [L, K, group, k, S]
    r = b = None
    if final_norm and cfg.norm != "rms":  # LayerNorm: the row scale and column bias matter
        r, b = _norm_terms(model, jnp.repeat(a, group, axis=1), wo, cols[:n_used])
        r = r.reshape(L, K, group, n_used).transpose(0, 1, 3, 2)[..., None]  # [L, K, Σn, g, 1]
    out, start = [], 0
    for n in sizes:
        blk = jax.lax.dot_general(a[:, :, start:start + n], m[..., start:start + n],
                                  (((3,), (3,)), ((0, 1), (0, 1))))  # [L, K, n, group, n]
        if r is not None:
            blk = blk * r[:, :, start:start + n] + b[start:start + n]
        out.append(blk)
        start += n
    return out


@jax.jit(static_argnames=("embed_mode", "final_norm"))
def _ov_logits_jit(graphdef, state, token_ids, embed_mode, final_norm):
    return _ov_logits(nnx.merge(graphdef, state), token_ids, embed_mode, final_norm)


def ov_logits(model, token_ids, *, embed_mode: str = "mlp0_only",
              final_norm: bool = True) -> Labelled:
    """Effective OV logits of every head, ``Labelled [layer, head, token_in, token_out]``
    (``[L, H, m, m]``), in one compiled program (parameters are arguments, not constants)."""
    ids = jnp.asarray(token_ids, jnp.int32)
    if ids.ndim != 1:
        raise ValueError(f"ov_logits: token_ids must be [m], got shape {ids.shape}")
    embed_mode = resolve_embed_mode(model.config, embed_mode)
    graphdef, state = nnx.split(model)
    out = _ov_logits_jit(graphdef, state, ids, embed_mode, bool(final_norm))
    return Labelled(out, ("layer", "head", "token_in", "token_out"))


@dataclasses.dataclass(frozen=True)
class PairTable:
    """Every class's pairs and candidate sets over the union of their tokens.

    Attributes:
      tokens: ``[m]`` distinct token ids (the rows and columns of :func:`ov_logits`).
      names: class names ``[C]``.
      src, tgt, cls: ``[P]`` each: pair ``p`` asks that row ``src[p]`` put ``tgt[p]`` first
        among the tokens of class ``cls[p]``.
      item, item_cls: ``[Q]``: every (class, item) for the copy score.
      cand: ``[C, m]`` bool, the candidate tokens of each class.
      pooled: ``[C]`` bool, the classes in the pooled score (not held out).
    """

    tokens: np.ndarray
    names: tuple[str, ...]
    src: np.ndarray
    tgt: np.ndarray
    cls: np.ndarray
    item: np.ndarray
    item_cls: np.ndarray
    cand: np.ndarray
    pooled: np.ndarray

    @property
    def chance(self) -> float:
        """Pooled chance level: mean of ``1 / |class|`` over the pooled pairs."""
        sizes = self.cand.sum(1)
        w = self.pooled[self.cls]
        return float(np.mean(1.0 / sizes[self.cls][w]))

    def class_chance(self) -> dict[str, float]:
        return {n: 1.0 / float(self.cand[c].sum()) for c, n in enumerate(self.names)}

    def layout(self, pad_to: int = 16) -> ClassLayout:
        """The class-block layout of the table (:class:`ClassLayout`): each class's token
        columns in ascending order, the classes concatenated and padded with column 0 to a
        multiple of ``pad_to``. The pairs and items must be grouped by class, in class order
        (as :func:`pair_table` builds them)."""
        if (np.diff(self.cls) < 0).any() or (np.diff(self.item_cls) < 0).any():
            raise ValueError("PairTable.layout: pairs and items must be grouped by class")
        members = [np.flatnonzero(c) for c in self.cand]
        used = sum(len(mm) for mm in members)
        order = np.zeros(-(-used // pad_to) * pad_to, np.int32)
        order[:used] = np.concatenate(members)
        pos = np.zeros(self.cand.shape, np.int32)  # pos[c, col]: col's place in class c
        for c, mm in enumerate(members):
            pos[c, mm] = np.arange(len(mm))
        place = np.concatenate([pos[self.cls, self.src], pos[self.cls, self.tgt],
                                pos[self.item_cls, self.item]]).astype(np.int32)
        count = lambda c: tuple(int(n) for n in np.bincount(c, minlength=len(members)))  # noqa: E731
        return ClassLayout(order, tuple(len(mm) for mm in members), count(self.cls),
                           count(self.item_cls), place)


@dataclasses.dataclass(frozen=True)
class ClassLayout:
    """Where each score's entries sit in the class blocks of :func:`_ov_blocks`.

    Attributes:
      order: ``[S]`` columns of the table's tokens, class after class (padded at the end).
      sizes: ``[C]`` class sizes ``n_c``.
      n_pairs, n_items: ``[C]`` the number of pairs / items of each class.
      place: ``[2P + Q]`` int32: each pair's source's place in its class (``[P]``), each
        pair's target's place (``[P]``), each item's place (``[Q]``), in the table's order
        (class after class).
    """

    order: np.ndarray
    sizes: tuple[int, ...]
    n_pairs: tuple[int, ...]
    n_items: tuple[int, ...]
    place: np.ndarray


def pair_table(classes: Sequence[OrdinalClass]) -> PairTable:
    """A :class:`PairTable` of ``classes`` (a token in two classes is one row)."""
    if not classes:
        raise ValueError("pair_table: no classes")
    tokens = sorted({t for c in classes for t in c.token_ids})
    col = {t: i for i, t in enumerate(tokens)}
    src, tgt, cls, item, item_cls = [], [], [], [], []
    cand = np.zeros((len(classes), len(tokens)), bool)
    for k, c in enumerate(classes):
        for t in c.token_ids:
            cand[k, col[t]] = True
            item.append(col[t])
            item_cls.append(k)
        for i, j in c.pairs:
            src.append(col[c.token_ids[i]])
            tgt.append(col[c.token_ids[j]])
            cls.append(k)
    pooled = np.array([not c.held_out for c in classes])
    if not pooled.any():
        raise ValueError("pair_table: every class is held out; nothing to pool")
    a = lambda v: np.asarray(v, np.int32)  # noqa: E731
    return PairTable(np.asarray(tokens, np.int32), tuple(c.name for c in classes), a(src),
                     a(tgt), a(cls), a(item), a(item_cls), cand, pooled)


def _first(logits: jax.Array, rows, targets, cls, cand) -> jax.Array:
    """``[..., P]`` bool: in ``logits[..., rows[p], :]`` the target is a maximum over the
    candidates of class ``cls[p]`` (ties count as success)."""
    r = logits[..., rows, :]  # [..., P, m]
    best = jnp.max(jnp.where(cand[cls], r, -jnp.inf), axis=-1)
    hit = r[..., jnp.arange(r.shape[-2]), targets]
    return hit >= best


def _class_means(hits: jax.Array, cls, n_classes: int) -> jax.Array:
    """``[..., P]`` -> ``[..., C]`` mean per class."""
    onehot = jax.nn.one_hot(cls, n_classes, dtype=jnp.float32)  # [P, C]
    return (hits.astype(jnp.float32) @ onehot) / onehot.sum(0)


def _pool(succ, pred, copy, cls, item_cls, pooled, n_cls: int) -> dict:
    """The pooled and per-class scores from each pair's / item's success ``[..., P|Q]``."""
    w = pooled[cls].astype(jnp.float32)
    wi = pooled[item_cls].astype(jnp.float32)
    pool = lambda h, ww: (h.astype(jnp.float32) @ ww) / ww.sum()  # noqa: E731
    return {"succession": pool(succ, w), "predecessor": pool(pred, w), "copy": pool(copy, wi),
            "per_class": _class_means(succ, cls, n_cls), "hits": succ}


def _score_arrays(logits, src, tgt, cls, item, item_cls, cand, pooled):
    succ = _first(logits, src, tgt, cls, cand)
    pred = _first(logits, tgt, src, cls, cand)
    copy = _first(logits, item, item, item_cls, cand)
    return _pool(succ, pred, copy, cls, item_cls, pooled, cand.shape[0])


def _score_blocks(blocks: Sequence[jax.Array], n_pairs: Sequence[int], n_items: Sequence[int],
                  place: jax.Array, cls, item_cls, pooled) -> dict:
    """:func:`_score_arrays` on the class blocks ``[L, K, n_c, group, n_c]`` of
    :func:`_ov_blocks`: each row's maximum over its class once, then one comparison per pair
    and head; ``n_pairs``, ``n_items`` and ``place`` as in :class:`ClassLayout`."""
    P = sum(n_pairs)
    src, tgt, item = place[:P], place[P:2 * P], place[2 * P:]

    def first(blk, rowmax, i, j):  # [L, K, group, p]: entry (i, j) of each head is its row max
        return jnp.moveaxis(blk[:, :, i, :, j], 0, -1) >= jnp.swapaxes(rowmax[:, :, i], 2, 3)

    succ, pred, copy, p0, q0 = [], [], [], 0, 0
    for blk, p, q in zip(blocks, n_pairs, n_items, strict=True):
        rowmax = blk.max(-1)  # [L, K, n_c, group]
        s, t, it = src[p0:p0 + p], tgt[p0:p0 + p], item[q0:q0 + q]
        succ.append(first(blk, rowmax, s, t))
        pred.append(first(blk, rowmax, t, s))
        copy.append(first(blk, rowmax, it, it))
        p0, q0 = p0 + p, q0 + q
    L, K, _, group, _ = blocks[0].shape
    heads = lambda h: jnp.concatenate(h, axis=-1).reshape(L, K * group, -1)  # noqa: E731
    return _pool(heads(succ), heads(pred), heads(copy), cls, item_cls, pooled, len(blocks))


_score_arrays_jit = jax.jit(_score_arrays)


@dataclasses.dataclass
class HeadScores:
    """Scores of every head (``Labelled [layer, head]``) and their per-class breakdown.

    Attributes:
      succession, copy, predecessor: pooled scores ``[layer, head]``.
      per_class: ``{class: Labelled [layer, head]}`` succession accuracy per class (held-out
        classes included).
      chance: pooled chance level; class_chance: ``{class: 1/|class|}``.
      table: the :class:`PairTable` scored.
      hits: ``[layer, head, P]`` bool, the success of each pair.
    """

    succession: Labelled
    copy: Labelled
    predecessor: Labelled
    per_class: dict[str, Labelled]
    chance: float
    class_chance: dict[str, float]
    table: PairTable
    hits: np.ndarray

    def top(self, k: int = 10, which: str = "succession") -> list[tuple[int, int, float]]:
        """The ``k`` best heads ``[(layer, head, score), ...]`` (ties: lower layer, head)."""
        s = np.asarray(getattr(self, which))
        order = np.lexsort((np.arange(s.size), -s.ravel()))[:k]
        return [(int(i // s.shape[1]), int(i % s.shape[1]), float(s.ravel()[i])) for i in order]

    def breakdown(self, layer: int, head: int) -> dict[str, float]:
        """Per-class succession accuracy of one head."""
        return {n: float(np.asarray(v)[layer, head]) for n, v in self.per_class.items()}


def scores_from_logits(logits, table: PairTable) -> HeadScores:
    """:class:`HeadScores` from ``logits [L, H, m, m]`` over ``table.tokens``."""
    vals = logits.values if isinstance(logits, Labelled) else jnp.asarray(logits)
    if vals.shape[-2:] != (len(table.tokens),) * 2:
        raise ValueError(f"scores_from_logits: logits {vals.shape} do not match the "
                         f"{len(table.tokens)} tokens of the table")
    out = _score_arrays_jit(vals, table.src, table.tgt, table.cls, table.item, table.item_cls,
                            jnp.asarray(table.cand), jnp.asarray(table.pooled))
    return _head_scores(out, table)


def _head_scores(out: dict, table: PairTable) -> HeadScores:
    lab = lambda v: Labelled(np.asarray(v), ("layer", "head"))  # noqa: E731
    per = np.asarray(out["per_class"])
    return HeadScores(
        succession=lab(out["succession"]), copy=lab(out["copy"]),
        predecessor=lab(out["predecessor"]),
        per_class={n: lab(per[..., c]) for c, n in enumerate(table.names)},
        chance=table.chance, class_chance=table.class_chance(), table=table,
        hits=np.asarray(out["hits"]))


def _score_heads(graphdef, state, tokens, order, sizes, n_pairs, n_items, place, arrays,
                 embed_mode, final_norm, cpu=False):
    blocks = _ov_blocks(nnx.merge(graphdef, state), tokens, order, sizes, embed_mode, final_norm,
                        cpu)
    return _score_blocks(blocks, n_pairs, n_items, place, *arrays)


_STATIC = ("sizes", "n_pairs", "n_items", "embed_mode", "final_norm")
# XLA:CPU's default (concurrency-optimised) schedule starts every product that reads only the
# weights at once: the transposed W_V, layer 0's MLP kernels and M live together, 41 MB of
# scratch for SmolLM2. Over glibc's largest mmap threshold (32 MiB) every call maps fresh
# scratch and faults each page in (14 -> 19.5 ms); the memory-optimised schedule needs 16 MB.
_score_heads_jit = {
    "cpu": jax.jit(functools.partial(_score_heads, cpu=True), static_argnames=_STATIC,
                   compiler_options={
                       "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}),
    "other": jax.jit(_score_heads, static_argnames=_STATIC)}


def _score_call(model, classes: Sequence[OrdinalClass], embed_mode: str, final_norm: bool):
    """``(table, jitted, args)``: the compiled scoring program of :func:`score_heads` for this
    backend and its arguments (``jitted.lower(*args)`` inspects the program)."""
    table = pair_table(classes)
    embed_mode = resolve_embed_mode(model.config, embed_mode)
    graphdef, state = nnx.split(model)
    lay = table.layout()
    jitted = _score_heads_jit["cpu" if jax.default_backend() == "cpu" else "other"]
    return table, jitted, (graphdef, state, table.tokens, lay.order, lay.sizes, lay.n_pairs,
                           lay.n_items, lay.place, (table.cls, table.item_cls, table.pooled),
                           embed_mode, bool(final_norm))


def score_heads(model, classes: Sequence[OrdinalClass], *, embed_mode: str = "mlp0_only",
                final_norm: bool = True) -> HeadScores:
    """Succession, copy and predecessor scores of every head of ``model`` on ``classes``
    (one compiled program over the class blocks of the logits; rankings as
    :func:`ov_logits`')."""
    table, jitted, args = _score_call(model, classes, embed_mode, final_norm)
    return _head_scores(jitted(*args), table)

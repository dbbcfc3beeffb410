"""PINE's segment importance and position re-assignment, and the baselines' positions and masks
(papers/pine.md §3-§5, §9).

Everything here is one function of the layer's queries and keys before RoPE,
:func:`pine_key_positions`, handed to the model as
``Intervention(key_positions=pine_key_positions, key_params=...)``: the shared attention core
(:mod:`common.attention.key_positions`) rotates the keys at the positions it returns, per query
token and head. The method is data (``key_params["method"]``), so vanilla, NIA, PCW, PINE, PINE
without re-assignment and PINE reversed run one compiled program.

Shapes: ``b`` batch, ``h`` query heads, ``sq`` queries, ``skv`` keys, ``k`` segments.

Importance (§4): per head, ``imp_tok(m, n) = softmax_n(q_m·k_n/√d)`` over segment keys only
(a segment query's own segment left out), then ``Imp(g, D_j) = Σ_{m∈g} Σ_{n∈D_j} imp_tok / L_j``
with ``g`` a segment (its queries summed) or one suffix/generated token. Ranks: a stable
descending sort, the query's own segment first. Re-assignment (§5): segment ``j`` starts at
``P + Σ_{m ranked after j} L_m`` (the most important nearest the query; its own segment last,
at ``E - L_i``). PINE reversed ranks the other segments the other way (the most important
farthest), its own segment still last.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from common.attention.key_positions import KeyPositions, rope_tables
from common.attention.precision import accum_dtype, lowest
from common.attention.rope import RoPE
from projects.pine.layout import Layout, PineInputError

METHODS = ("vanilla", "nia", "pcw", "pine", "pine_no_reassign", "pine_reverse")
"""The methods, in the summary's order. Masks: vanilla causal; NIA and PCW causal without
attention between segments; the PINE family causal within a segment, bidirectional between."""

_IMPORTANCE = {"pine": 1, "pine_reverse": -1}


def method_index(method: str) -> int:
    if method not in METHODS:
        raise PineInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS.index(method)


def segment_importance(q: jax.Array, k: jax.Array, q_doc: jax.Array, kv_doc: jax.Array,
                       seg_len: jax.Array) -> jax.Array:
    """``Imp [b, h, sq, k]``: each query's importance of each segment, from pre-RoPE ``q [b,
    sq, h, d]`` and ``k [b, skv, kvh, d]``; segment queries (``q_doc > 0``) carry their whole
    segment's sum. ``kv_doc [b, skv]`` (0 outside segments), ``seg_len [b, k]``."""
    b, sq, h, d = q.shape
    kvh = k.shape[2]
    nseg = seg_len.shape[1]
    acc = accum_dtype(q.dtype)  # float32, float64 for a float64 model
    kr = jnp.repeat(k, h // kvh, axis=2).astype(acc)
    s = jnp.einsum("bqhd,bshd->bhqs", q.astype(acc), kr) / np.sqrt(d)
    valid = (kv_doc[:, None, :] > 0) & (kv_doc[:, None, :] != q_doc[:, :, None])  # [b, sq, skv]
    s = jnp.where(valid[:, None], s, lowest(acc))
    p = jnp.where(valid[:, None], jax.nn.softmax(s, axis=-1), 0.0)
    onehot_k = (kv_doc[..., None] == jnp.arange(1, nseg + 1)).astype(acc)  # [b, skv, k]
    imp = jnp.einsum("bhqs,bsk->bhqk", p, onehot_k) / seg_len[:, None, None, :].astype(acc)
    onehot_q = (q_doc[..., None] == jnp.arange(1, nseg + 1)).astype(acc)  # [b, sq, k]
    per_seg = jnp.einsum("bhqk,bqa->bhak", imp, onehot_q)  # [b, h, k_query, k]
    grouped = jnp.einsum("bhak,bqa->bhqk", per_seg, onehot_q)
    return jnp.where((q_doc > 0)[:, None, :, None], grouped, imp)


def ranks(imp: jax.Array, q_doc: jax.Array, sign: int | jax.Array = 1) -> jax.Array:
    """``[b, h, sq, k]`` rank of each segment per query (0 = nearest the query): the query's
    own segment first, then by ``sign · importance`` descending (stable: ties to the earlier
    segment)."""
    nseg = imp.shape[-1]
    own = (q_doc[:, None, :, None] == jnp.arange(1, nseg + 1))
    key = jnp.where(own, jnp.inf, sign * imp)
    # a stable descending sort's ranks, by counting (k x k comparisons; no sort on CPU)
    km, kj = key[..., None, :], key[..., :, None]  # [.., j, m]
    before = (km > kj) | ((km == kj) & (jnp.arange(nseg)[None, :] < jnp.arange(nseg)[:, None]))
    return jnp.sum(before, axis=-1)


def starts_from_ranks(rank: jax.Array, seg_len: jax.Array, prefix_len: jax.Array) -> jax.Array:
    """``[b, h, sq, k]`` first position of each segment: ``P + Σ_{m ranked after j} L_m``."""
    after = rank[..., None, :] > rank[..., :, None]  # [.., j, m]: m ranked after j
    lens = seg_len[:, None, None, None, :]
    return prefix_len[:, None, None, None] + jnp.sum(jnp.where(after, lens, 0), axis=-1)


def pine_key_positions(q: jax.Array, k: jax.Array, params: dict, layer,  # noqa: ARG001
                       block_size: int | None = None) -> KeyPositions:
    """The :class:`KeyPositions` of one layer (``Intervention.key_positions``).

    ``params`` (see :func:`key_params`): ``method`` (int, index in :data:`METHODS`), ``q_pos
    [b, sq]``, ``q_doc [b, sq]``, ``kv_doc [b, skv]``, ``kv_base [b, skv]``, ``kv_block [b,
    skv]`` (the keys outside the segments in ``z`` blocks of at most ``block_size``, then
    segment ``i`` in block ``z + i - 1``), ``zero_blocks [z]``, ``seg_len [b, k]``,
    ``prefix_len [b]`` and ``fixed_start [b, k]`` (the baselines' segment starts); optional
    ``rope_cos``/``rope_sin`` (:func:`rope_table_params`: the core reads cos/sin from them).
    Use :func:`key_positions_fn` for a ``block_size``.
    """
    b, sq, h, _ = q.shape
    method = params["method"]
    seg_len, q_doc = params["seg_len"], params["q_doc"]
    imp = segment_importance(q, k, q_doc, params["kv_doc"], seg_len)
    sign = jnp.where(method == METHODS.index("pine_reverse"), -1.0, 1.0)
    start = starts_from_ranks(ranks(imp, q_doc, sign), seg_len, params["prefix_len"])
    by_importance = (method == METHODS.index("pine")) | (method == METHODS.index("pine_reverse"))
    start = jnp.where(by_importance, start, params["fixed_start"][:, None, None, :])
    nz = params["zero_blocks"].shape[0]
    shift = jnp.concatenate([jnp.zeros(start.shape[:-1] + (nz,), start.dtype), start], axis=-1)
    return KeyPositions(q=jnp.broadcast_to(params["q_pos"][:, None], (b, h, sq)),
                        kv=params["kv_base"], block=params["kv_block"], shift=shift,
                        block_size=block_size, fixed_blocks=nz,
                        rope_cos=params.get("rope_cos"), rope_sin=params.get("rope_sin"))


_FNS: dict[int | None, object] = {None: pine_key_positions}


@functools.lru_cache(maxsize=16)
def _tables(rope: RoPE, bound: int, dtype) -> tuple[jax.Array, jax.Array]:
    return rope_tables(rope, bound, dtype)


def rope_table_params(model, kv_len: int) -> dict:
    """``{"rope_cos", "rope_sin"}``: the model's RoPE tables over ``[0, kv_len)``, for
    ``key_params`` (every PINE position and every query position minus a segment start is
    below the number of key slots). Handed to the compiled forward as arrays, so the core
    rotates by table lookups instead of evaluating cos/sin per element."""
    rope = model.blocks.attn.rope
    cos, sin = _tables(rope, int(kv_len), accum_dtype(model.dtype))
    return {"rope_cos": cos, "rope_sin": sin}


def key_positions_fn(block_size: int | None):
    """:func:`pine_key_positions` with a static ``block_size`` (one function object per size,
    so a jitted forward sees the same static field and does not retrace)."""
    if block_size not in _FNS:
        def fn(q, k, params, layer):
            return pine_key_positions(q, k, params, layer, block_size)

        _FNS[block_size] = fn
    return _FNS[block_size]


def block_plan(layouts, kv_len: int, bucket: int = 16) -> tuple[int, int]:
    """``(block_size, zero_blocks)`` for prompts of ``kv_len`` slots: the longest segment
    rounded up to ``bucket``, and how many blocks of that size the keys outside the segments
    need (the most over ``layouts``)."""
    size = max(max(lay.seg_lens) for lay in layouts)
    size = -(-size // bucket) * bucket
    outside = max(kv_len - sum(lay.seg_lens) for lay in layouts)
    return size, max(1, -(-outside // size))


# ------------------------------------------------------------------ per-prompt data (numpy)

def query_positions(layout: Layout, method: str, n: int | None = None) -> np.ndarray:
    """``[n]`` position of every token as a query (and as a key outside the segments), for
    ``n >= layout.n`` tokens (the extra ones continue the suffix: padding, generated tokens).

    vanilla, NIA and PINE without re-assignment: the sequence index; PCW: every segment from
    ``P``, the suffix after the longest segment; PINE and PINE reversed: the stacked positions
    (segments right-aligned to ``E``; keys are re-assigned per query anyway).

    PINE without re-assignment keeps the sequence positions (the bidirectional mask alone, the
    paper's ablation, which it says is not invariant): with the stacked positions of §12 of the
    spec every segment's keys would sit at order-free positions and the ablation would be
    invariant by construction.
    """
    method_index(method)
    n = layout.n if n is None else n
    idx = np.arange(n)
    if method in ("vanilla", "nia", "pine_no_reassign"):
        return idx.astype(np.int32)
    p, e = layout.prefix_len, layout.seg_end
    if method == "pcw":
        out = idx.copy()
        seg = layout.doc > 0
        out[:layout.n][seg] = p + layout.off[seg]
        out[e:] = p + max(layout.seg_lens) + (idx[e:] - e)
        return out.astype(np.int32)
    out = idx.copy()
    out[:layout.n] = layout.stacked
    return out.astype(np.int32)


def fixed_starts(layout: Layout, method: str) -> np.ndarray:
    """``[k]`` segment starts of the baselines (unused by PINE and PINE reversed)."""
    if method == "pcw":
        return np.full(layout.k, layout.prefix_len, np.int32)
    return layout.seq_starts.astype(np.int32)


def key_params(layout: Layout, method: str, n_q: int, kv_len: int, q_start: int = 0,
               plan: tuple[int, int] | None = None) -> dict:
    """The ``key_params`` of :func:`pine_key_positions` for queries ``q_start .. q_start+n_q``
    of a sequence of ``kv_len`` slots (tokens past ``layout.n`` continue the suffix).

    ``plan``: ``(block_size, zero_blocks)`` of :func:`block_plan`; None: one block for all the
    keys outside the segments."""
    m = method_index(method)
    pos = query_positions(layout, method, max(kv_len, q_start + n_q))
    doc = np.full(max(kv_len, q_start + n_q), -1, np.int32)
    doc[:layout.n] = layout.doc
    kv_doc = np.maximum(doc[:kv_len], 0)
    kv_base = np.where(kv_doc > 0, np.pad(layout.off, (0, max(0, kv_len - layout.n)))[:kv_len],
                       pos[:kv_len])
    q_doc = doc[q_start:q_start + n_q]
    size, nz = (kv_len, 1) if plan is None else plan
    outside = np.cumsum(kv_doc == 0) - 1
    if outside[-1] >= size * nz:
        raise PineInputError(f"block plan {plan}: {outside[-1] + 1} keys outside the segments "
                             f"do not fit {nz} blocks of {size}")
    kv_block = np.where(kv_doc > 0, nz + kv_doc - 1, outside // size)
    arr = lambda x, dt=np.int32: jnp.asarray(np.asarray(x, dt)[None])  # noqa: E731
    return {
        "method": jnp.asarray(m, jnp.int32),
        "q_pos": arr(pos[q_start:q_start + n_q]),
        "q_doc": arr(q_doc),
        "kv_doc": arr(kv_doc),
        "kv_base": arr(kv_base),
        "kv_block": arr(kv_block),
        "zero_blocks": jnp.zeros((nz,), jnp.int32),
        "seg_len": arr(layout.seg_lens),
        "prefix_len": arr(layout.prefix_len),
        "fixed_start": arr(fixed_starts(layout, method)),
    }


def attention_mask(layout: Layout, method: str, n: int, kv_len: int | None = None) -> np.ndarray:
    """``[n, kv_len]`` bool: which keys each of the first ``n`` tokens sees (tokens past
    ``layout.n`` are suffix tokens; slots past ``n`` are empty)."""
    method_index(method)
    kv_len = n if kv_len is None else kv_len
    doc = np.full(n, -1, np.int32)
    doc[:layout.n] = layout.doc
    causal = np.arange(n)[None, :] <= np.arange(n)[:, None]
    di, dj = doc[:, None], doc[None, :]
    cross = (di > 0) & (dj > 0) & (di != dj)
    if method == "vanilla":
        vis = causal
    elif method in ("nia", "pcw"):
        vis = causal & ~cross
    else:
        vis = causal | cross
    out = np.zeros((n, kv_len), bool)
    out[:, :n] = vis
    return out

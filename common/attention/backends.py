"""Attention backends behind one function.

Each backend computes ``softmax(q kᵀ · scale + mask) v`` for
``q [batch, q_len, heads, head_dim]`` and ``k, v [batch, kv_len, kv_heads, head_dim]``,
with grouped-query attention when ``heads = kv_heads * group`` (K/V are never repeated in
memory: queries are reshaped to ``[batch, q_len, kv_heads, group, head_dim]``).

* ``reference``: einsum; materialises logits and pattern; supports every feature (softcap,
  probability transforms, returning the pattern).
* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU only).
* ``pallas``: our flash kernels (``common.attention.pallas``), where they are installed.
* ``auto``: the fastest backend that supports the call on this platform, falling back to
  ``reference`` with the reason recorded in :data:`LAST_FALLBACK` (for debugging).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.attention.masks import Mask

BACKENDS = ("auto", "reference", "xla", "cudnn", "pallas")

# Reason of the most recent ``auto`` fallback (trace time), for diagnostics only.
LAST_FALLBACK: dict[str, str] = {}


class BackendUnsupported(Exception):
    """Raised by a backend that cannot serve this call; ``auto`` then tries the next one."""


def einsum_unit_free(spec: str, a: jax.Array, b: jax.Array, **kwargs) -> jax.Array:
    """``jnp.einsum(spec, a, b)`` computed with the axes of size 1 dropped first.

    Same result; XLA:CPU lowers a dot with unit axes (decode's ``q_len = 1``, a single KV head,
    batch 1) to a much slower loop than the same dot without them (2.4x on the ICL regression
    model's fwd+bwd, ``[256, 1, 1, 4, 6]`` queries).
    """
    ins, out = spec.split("->")
    specs = ins.split(",")
    sizes: dict[str, set[int]] = {}
    for sp, x in zip(specs, (a, b), strict=True):
        for c, n in zip(sp, x.shape, strict=True):
            sizes.setdefault(c, set()).add(n)
    unit = {c for c, ns in sizes.items() if ns == {1}}
    if not unit:
        return jnp.einsum(spec, a, b, **kwargs)

    def drop(sp: str, x: jax.Array) -> tuple[str, jax.Array]:
        kept = [(c, n) for c, n in zip(sp, x.shape, strict=True) if c not in unit]
        return "".join(c for c, _ in kept), x.reshape([n for _, n in kept])

    (sa, a2), (sb, b2) = drop(specs[0], a), drop(specs[1], b)
    so = "".join(c for c in out if c not in unit)
    r = jnp.einsum(f"{sa},{sb}->{so}", a2, b2, **kwargs)
    return r.reshape([1 if c in unit else max(sizes[c]) for c in out])


def _unit_free_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its size-1 axes, except the last (the softmax axis) which is kept."""
    return tuple(n for n in shape[:-1] if n != 1) + shape[-1:]


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: Mask | None,
    scale: jax.Array,
    softcap: float | None = None,
    prob_transform: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Einsum attention. Returns ``(out [b, q_len, heads, d], pattern [b, heads, q_len, kv_len])``.

    ``prob_transform`` maps the float32 pattern ``[b, heads, q_len, kv_len]`` to a new one
    before it weights the values (ACT calibration plugs in here).

    Logits live in ``[b, kv_heads, group, q_len, kv_len]``; the scale, mask and softmax run on
    that array with its size-1 axes dropped (a free reshape): XLA:CPU's loops over shapes with
    unit axes were 1.5x slower on the ICL regression model (one query, one KV head).
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    full = (b, kvh, g, sq, skv)
    flat = _unit_free_shape(full)
    qg = q.reshape(b, sq, kvh, g, d)
    logits = einsum_unit_free("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(flat) * jnp.broadcast_to(
        scale.reshape(1, kvh, g, 1, 1), full).reshape(flat)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    if mask is not None:
        m = mask.materialize(b, sq, skv)
        if m is not None:
            m = m.reshape(b, -1, 1, sq, skv) if m.shape[1] == 1 else m.reshape(full)
            logits = jnp.where(jnp.broadcast_to(m, full).reshape(flat), logits,
                               jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    pattern = probs.reshape(b, h, sq, skv)
    if prob_transform is not None:
        pattern = prob_transform(pattern)
        probs = pattern
    out = einsum_unit_free("bkgqs,bskd->bqkgd", probs.reshape(full).astype(v.dtype), v,
                           preferred_element_type=jnp.float32)
    return out.reshape(b, sq, h, d).astype(q.dtype), pattern


# Query rows per chunk of the CPU causal path (measured on SmolLM2's 512-token prefill, 9 heads,
# head_dim 64: 8.9 ms -> 5.8 ms per layer against one full masked attention).
CAUSAL_CHUNK = 64


def _chunked_causal(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Square causal attention in query chunks that skip the keys above the diagonal.

    Chunk ``i`` (rows ``[i*c, (i+1)*c)``) attends to keys ``[0, (i+1)*c)`` only, so about half
    the logits and exponentials of the full masked product are never computed. The ``group``
    query heads that share a KV head are folded into the rows, so each KV head does one
    ``[c*group, head_dim] x [head_dim, keys]`` product instead of ``group`` small ones (SmolLM2,
    512 tokens, 9 heads on 3 KV heads: 5.9 -> 4.4 ms per layer; torch's SDPA 4.2 ms).
    ``q [b, s, heads, d]`` is pre-scaled; ``k, v [b, s, kv_heads, d]``. Exact: the same masked
    softmax, just not computed where it is masked.
    """
    b, s, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    c = CAUSAL_CHUNK
    qg = q.reshape(b, s, kvh, g, d).transpose(0, 2, 1, 3, 4)  # [b, kv_heads, s, group, d]
    kt = k.transpose(0, 2, 1, 3)  # [b, kv_heads, s, d]
    vt = v.transpose(0, 2, 1, 3)
    outs = []
    for start in range(0, s, c):
        stop = min(start + c, s)
        rows = (stop - start) * g
        qc = qg[:, :, start:stop].reshape(b, kvh, rows, d)
        logits = jnp.einsum("bkrd,bksd->bkrs", qc, kt[:, :, :stop],
                            preferred_element_type=jnp.float32)
        logits = logits.reshape(b, kvh, stop - start, g, stop)
        allowed = jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None]
        logits = jnp.where(allowed[:, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).reshape(b, kvh, rows, stop).astype(v.dtype)
        out = jnp.einsum("bkrs,bksd->bkrd", probs, vt[:, :, :stop],
                         preferred_element_type=jnp.float32)
        outs.append(out.reshape(b, kvh, stop - start, g, d))
    out = jnp.concatenate(outs, axis=2)  # [b, kv_heads, s, group, d]
    return out.transpose(0, 2, 1, 3, 4).reshape(b, s, h, d).astype(q.dtype)


def _sdpa(implementation: str):
    def run(q, k, v, mask: Mask | None, scale, softcap=None):
        if softcap is not None:
            raise BackendUnsupported(f"{implementation}: softcap not supported")
        b, sq, h, d = q.shape
        skv = k.shape[1]
        if implementation == "cudnn" and jax.default_backend() != "gpu":
            raise BackendUnsupported("cudnn: needs a GPU")
        q = (q * scale.reshape(1, 1, h, 1).astype(q.dtype))
        is_causal = False
        dense = None
        if mask is not None and not mask.is_empty:
            if mask.is_plain_causal and sq == skv:
                if (implementation == "xla" and sq >= 2 * CAUSAL_CHUNK
                        and jax.default_backend() == "cpu"):
                    return _chunked_causal(q, k, v)
                is_causal = True
            else:
                dense = mask.materialize(b, sq, skv)
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense, scale=1.0, is_causal=is_causal, implementation=implementation
        )

    return run


def _pallas(q, k, v, mask, scale, softcap=None):
    try:
        from common.attention.pallas import pallas_attention
    except ImportError as e:  # the kernels are optional until installed
        raise BackendUnsupported(f"pallas: not available ({e})") from e
    return pallas_attention(q, k, v, mask=mask, scale=scale, softcap=softcap)


_IMPLS: dict[str, Callable] = {
    "xla": _sdpa("xla"),
    "cudnn": _sdpa("cudnn"),
    "pallas": _pallas,
}


def auto_order(platform: str | None = None) -> tuple[str, ...]:
    """Backends ``auto`` tries, fastest first, for a platform (``cpu``, ``gpu``, ``tpu``)."""
    platform = platform or jax.default_backend()
    if platform == "gpu":
        return ("pallas", "cudnn", "xla")
    if platform == "tpu":
        return ("pallas", "xla")
    return ("xla",)


def run_backend(name: str, q, k, v, mask, scale, softcap) -> jax.Array:
    """Dispatch to one backend (not ``reference``/``auto``); raises BackendUnsupported."""
    if name not in _IMPLS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    return _IMPLS[name](q, k, v, mask, scale, softcap)

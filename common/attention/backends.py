"""Attention backends behind one function; each name runs one thing.

Each backend computes ``softmax(q kᵀ · scale + mask) v`` for
``q [batch, q_len, heads, head_dim]`` and ``k, v [batch, kv_len, kv_heads, head_dim]``,
with grouped-query attention when ``heads = kv_heads * group`` (K/V are never repeated in
memory: queries are reshaped to ``[batch, q_len, kv_heads, group, head_dim]``).

=============  =====================================================================  ==========
name           runs                                                                   ``auto``
=============  =====================================================================  ==========
``reference``  plain ``jnp.einsum``; materialises logits and pattern; every feature     fallback
               (softcap, probability transforms, returning the pattern)
``cpu``        einsums tuned for XLA:CPU: square plain-causal calls of at least         CPU
               ``2 * CAUSAL_CHUNK`` tokens (no softcap) in query chunks that skip the
               keys above the diagonal; every other call the reference einsum with its
               size-1 axes dropped (:func:`einsum_unit_free`). Every feature but the
               pattern; runs on any platform
``xla``        ``jax.nn.dot_product_attention(implementation="xla")``; no softcap        GPU, TPU
``cudnn``      ``jax.nn.dot_product_attention(implementation="cudnn")``; GPU, bf16/f16   GPU
``pallas``     our flash kernels (:mod:`common.attention.pallas`)                       GPU, TPU
=============  =====================================================================  ==========

``auto`` tries :func:`auto_order` for the platform and runs the first backend that serves the
call; when none does it runs ``reference`` and logs why (logger ``common.attention.backends``,
``WARNING``, once per distinct reason). Asking for the pattern or a probability transform runs
``reference`` whatever the backend (logged at ``INFO``, once per reason), except an ACT
calibration (a transform with a ``fused_act`` description), which ``auto`` runs in the fused
Pallas flash kernel on TPU and ``pallas`` anywhere (:func:`use_fused_act`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.attention.contract import BackendUnsupported
from common.attention.masks import Mask
from common.attention.precision import accum_dtype, lowest

BACKENDS = ("auto", "reference", "cpu", "xla", "cudnn", "pallas")

logger = logging.getLogger(__name__)

# Reasons already logged (a call is traced once per shape: log each reason once per process).
_LOGGED: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.log(level, message)


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
    """The ``reference`` backend: plain einsum attention, every feature.

    Returns ``(out [b, q_len, heads, d], pattern [b, heads, q_len, kv_len])``.
    ``prob_transform`` maps the pattern ``[b, heads, q_len, kv_len]`` (float32; float64 for
    float64 inputs) to a new one before it weights the values (ACT calibration plugs in here).
    """
    return _einsum_attention(q, k, v, mask, scale, softcap, prob_transform, unit_free=False)


def _einsum_attention(q, k, v, mask: Mask | None, scale: jax.Array, softcap: float | None,
                      prob_transform: Callable | None, *, unit_free: bool):
    """Einsum attention; ``unit_free`` drops size-1 axes (the ``cpu`` backend's tuning).

    Logits live in ``[b, kv_heads, group, q_len, kv_len]``. With ``unit_free`` the einsums run
    through :func:`einsum_unit_free` and the scale, mask and softmax run on that array with its
    size-1 axes dropped (a free reshape): XLA:CPU's loops over shapes with unit axes were 1.5x
    slower on the ICL regression model (one query, one KV head). The same function either way.
    """
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    full = (b, kvh, g, sq, skv)
    flat = _unit_free_shape(full) if unit_free else full
    einsum = einsum_unit_free if unit_free else jnp.einsum
    acc = accum_dtype(q.dtype)
    qg = q.reshape(b, sq, kvh, g, d)
    logits = einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=acc)
    logits = logits.reshape(flat) * jnp.broadcast_to(
        scale.reshape(1, kvh, g, 1, 1), full).reshape(flat)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    if mask is not None:
        m = mask.materialize(b, sq, skv)
        if m is not None:
            m = m.reshape(b, -1, 1, sq, skv) if m.shape[1] == 1 else m.reshape(full)
            logits = jnp.where(jnp.broadcast_to(m, full).reshape(flat), logits, lowest(acc))
    probs = jax.nn.softmax(logits, axis=-1)
    pattern = probs.reshape(b, h, sq, skv)
    if prob_transform is not None:
        pattern = prob_transform(pattern)
        probs = pattern
    out = einsum("bkgqs,bskd->bqkgd", probs.reshape(full).astype(v.dtype), v,
                 preferred_element_type=acc)
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
    acc = accum_dtype(q.dtype)
    outs = []
    for start in range(0, s, c):
        stop = min(start + c, s)
        rows = (stop - start) * g
        qc = qg[:, :, start:stop].reshape(b, kvh, rows, d)
        logits = jnp.einsum("bkrd,bksd->bkrs", qc, kt[:, :, :stop],
                            preferred_element_type=acc)
        logits = logits.reshape(b, kvh, stop - start, g, stop)
        allowed = jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None]
        logits = jnp.where(allowed[:, None, :], logits, lowest(acc))
        probs = jax.nn.softmax(logits, axis=-1).reshape(b, kvh, rows, stop).astype(v.dtype)
        out = jnp.einsum("bkrs,bksd->bkrd", probs, vt[:, :, :stop],
                         preferred_element_type=acc)
        outs.append(out.reshape(b, kvh, stop - start, g, d))
    out = jnp.concatenate(outs, axis=2)  # [b, kv_heads, s, group, d]
    return out.transpose(0, 2, 1, 3, 4).reshape(b, s, h, d).astype(q.dtype)


def _cpu(q, k, v, mask: Mask | None, scale, softcap=None):
    """The ``cpu`` backend: chunked causal prefill, else the unit-axis-free einsum."""
    b, sq, h, d = q.shape
    if (softcap is None and mask is not None and mask.is_plain_causal and sq == k.shape[1]
            and sq >= 2 * CAUSAL_CHUNK):
        return _chunked_causal(q * scale.reshape(1, 1, h, 1).astype(q.dtype), k, v)
    return _einsum_attention(q, k, v, mask, scale, softcap, None, unit_free=True)[0]


def _sdpa(implementation: str):
    """``jax.nn.dot_product_attention(implementation=...)``; the mask's structure is passed on
    (``is_causal`` for the plain square causal mask, else the materialised mask)."""

    def run(q, k, v, mask: Mask | None, scale, softcap=None):
        if softcap is not None:
            raise BackendUnsupported(f"{implementation}: softcap not supported")
        if q.dtype == jnp.float64:  # its softmax runs in float32: not a float64 computation
            raise BackendUnsupported(f"{implementation}: float64 (its softmax is float32)")
        if implementation == "cudnn":
            if jax.default_backend() != "gpu":
                raise BackendUnsupported("cudnn: needs a GPU")
            if q.dtype not in (jnp.bfloat16, jnp.float16):
                raise BackendUnsupported(f"cudnn: needs bf16/f16, got {q.dtype}")
        b, sq, h, d = q.shape
        skv = k.shape[1]
        q = (q * scale.reshape(1, 1, h, 1).astype(q.dtype))
        is_causal = False
        dense = None
        if mask is not None and not mask.is_empty:
            if mask.is_plain_causal and sq == skv:
                is_causal = True
            else:
                dense = mask.materialize(b, sq, skv)
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense, scale=1.0, is_causal=is_causal, implementation=implementation
        )

    return run


def _pallas(q, k, v, mask, scale, softcap=None):
    try:
        from common.attention.pallas.api import pallas_attention
    except ImportError as e:  # the kernels are optional until installed
        raise BackendUnsupported(f"pallas: not available ({e})") from e
    return pallas_attention(q, k, v, mask=mask, scale=scale, softcap=softcap)


_IMPLS: dict[str, Callable] = {
    "cpu": _cpu,
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
    return ("cpu",)


def use_fused_act(backend: str, platform: str | None = None) -> bool:
    """Whether an ACT probability transform (one with a ``fused_act`` description, see
    :class:`common.attention.act.ACTCalibration`) runs in the fused Pallas kernel.

    ``pallas`` always does (in interpret mode on CPU); ``auto`` does on TPU, where the flash
    kernel lowers (Mosaic TPU). ``auto`` on CPU keeps the reference path (materialised
    pattern, exact); on GPU too, because the fused ACT forward is a Mosaic TPU kernel that does
    not lower there (the Mosaic GPU kernel has no ACT accumulators). Every other backend runs
    the reference path for a probability transform.
    """
    if backend == "pallas":
        return True
    if backend != "auto":
        return False
    return (platform or jax.default_backend()) == "tpu"


def attend(backend: str, q, k, v, mask: Mask | None, scale: jax.Array, softcap=None,
           prob_transform=None, return_pattern=False) -> tuple[jax.Array, jax.Array | None]:
    """Run backend ``backend`` (a name in :data:`BACKENDS`): ``(out, pattern or None)``.

    ``q, k, v, mask, softcap, prob_transform`` as in
    :func:`common.attention.core.dot_product_attention`; ``scale`` is per head, ``[heads]``
    (float32, or float64 for float64 inputs). A named backend that cannot serve the call
    raises :class:`BackendUnsupported`; ``auto`` falls back to ``reference`` and logs why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if (prob_transform is not None and not return_pattern
            and getattr(prob_transform, "fused_act", None) is not None
            and use_fused_act(backend)):
        sinks, beta = prob_transform.fused_act(q, k, mask, scale)
        from common.attention.pallas.api import flash_attention

        out = flash_attention(q, k, v, mask=mask, scale=scale, softcap=softcap,
                              act_sinks=sinks, act_beta=beta)
        return out, None
    if return_pattern or prob_transform is not None:
        if backend != "reference":
            need = "the pattern" if return_pattern else "a probability transform"
            _log_once(logging.INFO, f"attention backend {backend!r}: {need} needs 'reference'")
        out, pattern = reference_attention(q, k, v, mask, scale, softcap, prob_transform)
        return out, pattern if return_pattern else None
    if backend == "reference":
        return reference_attention(q, k, v, mask, scale, softcap)[0], None
    order = auto_order() if backend == "auto" else (backend,)
    reasons = []
    for name in order:
        try:
            return _IMPLS[name](q, k, v, mask, scale, softcap), None
        except BackendUnsupported as e:
            if backend != "auto":
                raise
            reasons.append(str(e))
    _log_once(logging.WARNING, f"attention backend 'auto' falls back to 'reference': "
              f"{'; '.join(reasons)}")
    return reference_attention(q, k, v, mask, scale, softcap)[0], None

"""The paper's model: one layer of ``H`` full-width softmax heads reading ``[x; y]`` tokens.

Parameters use the core's per-head layout (``common.attention.layer``) with
``d_model = head_dim = D = d + N`` (every head is full width, §4 of the spec):

* ``w_q, w_k, w_v``: ``[D, H, D]`` (``q_h = z @ w_q[:, h, :]``, i.e. ``Q_h = w_q[:, h, :]ᵀ``);
* ``w_o``: ``[H, D, N]`` (``O_h = w_o[h]ᵀ``, ``N`` outputs, 1 for plain regression).

Only the query's output is computed; the query attends to the ``L`` context tokens only (not to
itself), logits are scaled by ``1/sqrt(D)``; no bias, norm, MLP, residual or positional encoding:

    ŷ_q = Σ_h O_h V_h Σ_l softmax_l((Q_h z_q)ᵀ(K_h z_l) / sqrt(D)) z_l.

An optional ``mask [H]`` (0/1) switches heads off (head ablation, e.g. of dummy heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.attention import Mask, dot_product_attention

Params = dict[str, jax.Array]


def init_params(key: jax.Array, width: int, heads: int, n_out: int = 1) -> Params:
    """PyTorch-default init (``nn.Linear``: ``U(±1/sqrt(fan_in))``) of an ``H``-head model.

    Args:
      key: PRNG key.
      width: token width ``D = d + N``.
      heads: number of real heads ``H`` (fan-in of the output map is ``H·D``).
      n_out: number of outputs ``N``.

    Returns:
      ``{"w_q", "w_k", "w_v": [D, H, D], "w_o": [H, D, N]}``.
    """
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    kq, kk, kv, ko = jax.random.split(key, 4)
    b_in = 1.0 / math.sqrt(width)
    b_out = 1.0 / math.sqrt(heads * width)
    u = lambda k, shape, b: jax.random.uniform(k, shape, jnp.float32, -b, b)
    return {
        "w_q": u(kq, (width, heads, width), b_in),
        "w_k": u(kk, (width, heads, width), b_in),
        "w_v": u(kv, (width, heads, width), b_in),
        "w_o": u(ko, (heads, width, n_out), b_out),
    }


def circuits(params: Params) -> tuple[jax.Array, jax.Array]:
    """Per-head circuits ``KQ [H, D, D]`` and ``OV [H, N, D]`` (math layout of the paper).

    ``KQ_h = K_hᵀ Q_h / sqrt(D)`` so that the logit of context token ``z_l`` is
    ``z_lᵀ KQ_h z_q``; ``OV_h = O_h V_h`` so that head ``h`` adds ``OV_h Σ_l p_{h,l} z_l``.
    """
    width = params["w_q"].shape[0]
    kq = jnp.einsum("mhk,nhk->hmn", params["w_k"], params["w_q"]) / math.sqrt(width)
    ov = jnp.einsum("hko,mhk->hom", params["w_o"], params["w_v"])
    return kq, ov


def forward(params: Params, context: jax.Array, query: jax.Array,
            mask: jax.Array | None = None, backend: str = "reference",
            kv_valid: jax.Array | None = None) -> jax.Array:
    """Softmax-attention prediction at the query (the training forward).

    The key and value projections are folded into the circuits (``q̃_h = KQ_h z_q``, keys and
    values are the raw tokens shared by all heads: ``kv_heads = 1``), and the attention runs
    through :func:`common.attention.dot_product_attention` with scale 1. This is the same
    function of the same parameters as :func:`forward_projected`, at a sixth of the cost.

    Args:
      params: see module docstring.
      context: ``[batch, L, D]`` tokens ``[x_l; y_l]``.
      query: ``[batch, D]`` token ``[x_q; 0]``.
      mask: optional ``[H]`` 0/1 head mask.
      backend: attention backend (``auto``, ``cpu``, ``reference`` or ``xla``).
      kv_valid: optional ``[batch, L]`` bool, False for padding tokens (prompts of several
        lengths evaluated in one compiled program).

    Returns:
      ``[batch, N]`` predictions ``ŷ_q``.
    """
    kq, ov = circuits(params)
    if mask is not None:
        ov = ov * mask[:, None, None]
    q = jnp.einsum("hmn,bn->bhm", kq, query)[:, None]  # [b, 1, H, D]
    kv = context[:, :, None, :]  # [b, L, 1, D]
    am = None if kv_valid is None else Mask(kv_valid=kv_valid)
    out = dot_product_attention(q, kv, kv, mask=am, scale=1.0, backend=backend).out[:, 0]
    return jnp.einsum("bhm,hom->bo", out, ov)


def forward_projected(params: Params, context: jax.Array, query: jax.Array,
                      mask: jax.Array | None = None, backend: str = "reference",
                      kv_valid: jax.Array | None = None) -> jax.Array:
    """The same prediction with explicit per-head projections ``q, k, v [b, ·, H, D]``.

    Slower than :func:`forward`; kept as the literal transcription of the paper's layer.
    """
    width = context.shape[-1]
    q = jnp.einsum("bm,mhk->bhk", query, params["w_q"])[:, None]  # [b, 1, H, D]
    k = jnp.einsum("blm,mhk->blhk", context, params["w_k"])  # [b, L, H, D]
    v = jnp.einsum("blm,mhk->blhk", context, params["w_v"])  # [b, L, H, D]
    am = None if kv_valid is None else Mask(kv_valid=kv_valid)
    out = dot_product_attention(q, k, v, mask=am, scale=1.0 / math.sqrt(width),
                                backend=backend).out
    z = out[:, 0]  # [b, H, D]
    if mask is not None:
        z = z * mask[None, :, None]
    return jnp.einsum("bhk,hko->bo", z, params["w_o"])


def forward_linear(params: Params, context: jax.Array, query: jax.Array,
                   mask: jax.Array | None = None, backend: str = "reference",
                   kv_valid: jax.Array | None = None,
                   norm_length: int | None = None) -> jax.Array:
    """Linear-attention baseline ``ŷ = Σ_h O_h V_h (1/L₀) Σ_l z_l (K_h z_l)ᵀ(Q_h z_q)/sqrt(D)``.

    Same parameters and shapes as :func:`forward`; no softmax. ``L₀ = norm_length`` is the
    hard-coded normaliser (the training length, as in the paper's LinTF, so a longer prompt
    is not renormalised); None divides by the prompt's own length. ``backend`` is ignored.
    """
    del backend
    if kv_valid is not None:
        context = context * kv_valid[..., None]
    if norm_length is not None:
        length = norm_length
    elif kv_valid is None:
        length = context.shape[1]
    else:
        length = jnp.sum(kv_valid, axis=-1)[:, None, None]
    kq, ov = circuits(params)
    if mask is not None:
        ov = ov * mask[:, None, None]
    scores = jnp.einsum("blm,hmn,bn->bhl", context, kq, query) / length
    return jnp.einsum("bhl,blm,hom->bo", scores, context, ov)


def _affine(x: jax.Array, c: float) -> jax.Array:
    # Clipped at 0 so the weights stay a distribution: 1 + Cx alone can make Σ_l f(ν_l) cross 0
    # (a division by ~0) once |ω| grows; identical to 1 + Cx while every logit is above -1/C.
    return jnp.maximum(1.0 + c * x, 0.0)


def _quadratic(x: jax.Array, c: float) -> jax.Array:
    return (1.0 + c * x) ** 2


def _one_plus_tanh(x: jax.Array, c: float) -> jax.Array:
    return 1.0 + jnp.tanh(c * x)


class Activation(NamedTuple):
    """One f of the activation ablation: ``fn(x, C)``, ``slope = C_f / C``, a plot label."""

    fn: Callable[[jax.Array, float], jax.Array]
    slope: float
    label: str


# The blog's activation ablation (§8 of the spec): exp is replaced by f and renormalised,
# σ(ν)_l = f(ν_l) / Σ_l' f(ν_l'). ``C_f = f'(0) / f(0)`` sets the effective GD step
# η_eff = 2·C_f·‖ω‖∞·‖μ‖∞ of a ± head pair at small logits.
ACTIVATIONS: dict[str, Activation] = {
    "affine": Activation(_affine, 1.0, "max(1+Cx, 0)"),
    "quadratic": Activation(_quadratic, 2.0, "(1+Cx)²"),
    "tanh": Activation(_one_plus_tanh, 1.0, "1+tanh(Cx)"),
}


def forward_activation(params: Params, context: jax.Array, query: jax.Array,
                       mask: jax.Array | None = None, backend: str = "reference",
                       kv_valid: jax.Array | None = None, *, activation: str = "tanh",
                       c: float = 1.0) -> jax.Array:
    """:func:`forward` with ``exp`` replaced by ``f = ACTIVATIONS[activation].fn`` (normalised).

    ``ŷ = Σ_h OV_h Σ_l w_{h,l} z_l / Σ_l w_{h,l}`` with ``w_{h,l} = f(z_lᵀ KQ_h z_q; c)``. Same
    parameters and shapes as :func:`forward`; ``backend`` is ignored (the core's attention is
    softmax only). Padding tokens (``kv_valid`` False) get weight 0.
    """
    del backend
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    kq, ov = circuits(params)
    if mask is not None:
        ov = ov * mask[:, None, None]
    q = jnp.einsum("hmn,bn->bhm", kq, query)  # [b, H, D]
    w = ACTIVATIONS[activation].fn(jnp.einsum("bhm,blm->bhl", q, context), c)  # [b, H, L]
    if kv_valid is not None:
        w = w * kv_valid[:, None, :]
    out = jnp.einsum("bhl,blm->bhm", w, context) / jnp.sum(w, axis=-1, keepdims=True)
    return jnp.einsum("bhm,hom->bo", out, ov)


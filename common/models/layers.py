"""Norms, MLPs and embeddings for the decoder LMs (Flax NNX, logical axis names on params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.attention.hooks import NO_HOOKS, Hooks
from common.attention.layer import param
from common.attention.precision import accum_dtype

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class Norm(nnx.Module):
    """RMSNorm (Llama) or LayerNorm (GPT-2, NeoX) over the last axis ``[..., d_model]``.

    ``norm(x, hooks=h, site="ln1_scale", layer=l)`` passes the per-token divisor ``scale
    [batch, pos]`` (float32, float64 for a float64 model; ``sqrt(mean(x²) + eps)``, or
    ``sqrt(var(x) + eps)`` for LayerNorm: TransformerLens' ``hook_scale``) through the hooks.
    A hook that returns another array (a patch, a frozen scale, a traced offset) makes the
    norm divide by it; one that returns the array it was given leaves the norm's own
    ``x · rsqrt(...)``, so observing changes no bit, and the traced program is the same with or
    without hooks (the unused divisor is dropped by XLA).
    """

    def __init__(self, d_model: int, kind: str, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kind = kind
        self.eps = eps
        self.scale = param(rngs, (d_model,), ("embed",), param_dtype, "ones")
        self.bias = param(rngs, (d_model,), ("embed",), param_dtype, "zeros") if kind == "layer" else None

    def __call__(self, x: jax.Array, hooks: Hooks = NO_HOOKS, site: str | None = None,
                 layer: int = 0) -> jax.Array:
        dtype = x.dtype
        acc = accum_dtype(dtype)
        xf = x.astype(acc)
        if self.kind == "rms":
            y = self._divide(xf, jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps,
                             hooks, site, layer)
            return y.astype(dtype) * self.scale[...].astype(dtype)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = self._divide(xf - mean, var + self.eps, hooks, site, layer)
        y = y * self.scale[...].astype(acc) + self.bias[...].astype(acc)
        return y.astype(dtype)

    @staticmethod
    def _divide(xf, ms, hooks: Hooks, site: str | None, layer: int) -> jax.Array:
        """``xf / sqrt(ms)`` (``ms [..., 1]``), the divisor passed through ``hooks.site``."""
        scale = jnp.sqrt(ms)[..., 0]
        if site is not None:
            edited = hooks.site(site, layer, scale)
            if edited is not scale:  # replaced: divide by what the hook returned
                return xf / edited.astype(xf.dtype)[..., None]
        return xf * jax.lax.rsqrt(ms)  # observed or no hooks: the norm's own computation


class MLP(nnx.Module):
    """Gated (SwiGLU: ``down(act(gate x) * up x)``) or plain (``down(act(up x))``) MLP.

    Params: ``gate_kernel``/``up_kernel [d_model, d_mlp]``, ``down_kernel [d_mlp, d_model]``,
    optional ``up_bias [d_mlp]``, ``down_bias [d_model]``.
    """

    def __init__(self, d_model: int, d_mlp: int, *, act: str, gated: bool, bias: bool,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, init_std: float = 0.02):
        self.act = act
        self.dtype = dtype
        p = lambda shape, axes, init=None: param(rngs, shape, axes, param_dtype, init, init_std)
        self.gate_kernel = p((d_model, d_mlp), ("embed", "mlp")) if gated else None
        self.up_kernel = p((d_model, d_mlp), ("embed", "mlp"))
        self.down_kernel = p((d_mlp, d_model), ("mlp", "embed"))
        self.up_bias = p((d_mlp,), ("mlp",), "zeros") if bias else None
        self.down_bias = p((d_model,), ("embed",), "zeros") if bias else None

    def __call__(self, x: jax.Array, hooks: Hooks = NO_HOOKS, layer: int = 0) -> jax.Array:
        """``x [batch, seq, d_model] -> [batch, seq, d_model]``; sites ``mlp_pre`` (the gate
        projection of a gated MLP, the biased input projection of a plain one) and ``mlp_post``
        (the hidden activation entering the down projection)."""
        dt = self.dtype
        up = x @ self.up_kernel[...].astype(dt)
        if self.up_bias is not None:
            up = up + self.up_bias[...].astype(dt)
        if self.gate_kernel is not None:
            pre = hooks.site("mlp_pre", layer, x @ self.gate_kernel[...].astype(dt))
            h = ACTIVATIONS[self.act](pre) * up
        else:
            h = ACTIVATIONS[self.act](hooks.site("mlp_pre", layer, up))
        h = hooks.site("mlp_post", layer, h)
        out = h @ self.down_kernel[...].astype(dt)
        if self.down_bias is not None:
            out = out + self.down_bias[...].astype(dt)
        return out


class Embed(nnx.Module):
    """Token (or position) embedding table ``[num, d_model]``."""

    def __init__(self, num: int, d_model: int, axes: tuple[str, str], *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, init_std: float = 0.02):
        self.embedding = param(rngs, (num, d_model), axes, param_dtype, None, init_std)

    def __call__(self, ids: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied unembedding: ``x [..., d_model] -> [..., num]`` (float32; float64 for a
        float64 model)."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype),
                          preferred_element_type=accum_dtype(x.dtype))

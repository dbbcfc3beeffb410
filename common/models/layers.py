"""Norms, MLPs and embeddings for the decoder LMs (Flax NNX, logical axis names on params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.attention.layer import param

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class Norm(nnx.Module):
    """RMSNorm (Llama) or LayerNorm (GPT-2, NeoX) over the last axis ``[..., d_model]``."""

    def __init__(self, d_model: int, kind: str, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kind = kind
        self.eps = eps
        self.scale = param(rngs, (d_model,), ("embed",), param_dtype, "ones")
        self.bias = param(rngs, (d_model,), ("embed",), param_dtype, "zeros") if kind == "layer" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        if self.kind == "rms":
            y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
            return y.astype(dtype) * self.scale[...].astype(dtype)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)


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

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [batch, seq, d_model] -> [batch, seq, d_model]``."""
        dt = self.dtype
        up = x @ self.up_kernel[...].astype(dt)
        if self.up_bias is not None:
            up = up + self.up_bias[...].astype(dt)
        if self.gate_kernel is not None:
            h = ACTIVATIONS[self.act](x @ self.gate_kernel[...].astype(dt)) * up
        else:
            h = ACTIVATIONS[self.act](up)
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
        """Tied unembedding: ``x [..., d_model] -> [..., num]`` (float32)."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype),
                          preferred_element_type=jnp.float32)

"""Hugging Face parameter names and layouts -> headlab's per-head parameters.

Each architecture gets a list of ``(our_path, hf_name, transform)``; transforms reshape torch
``[out, in]`` matrices into the explicit-head layout (Q ``[d_model, heads, head_dim]``,
O ``[heads, head_dim, d_model]``, ...) as numpy views, so that slicing a transformed
memory-mapped tensor reads only the slice. :func:`assign_weights` checks every shape against the
model and names the tensor at fault; :func:`assign_sharded` builds each parameter directly on
its devices from the slices each device holds (``jax.make_array_from_callback`` semantics).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.models.config import ModelConfig


class WeightShapeError(ValueError):
    """A checkpoint tensor does not fit the model built from its config."""


def _heads_in(n_heads: int, d_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch ``[heads*d_head, d_model]`` -> ``[d_model, heads, d_head]`` (a view)."""
    return lambda w: w.reshape(n_heads, d_head, -1).transpose(2, 0, 1)


def _heads_out(n_heads: int, d_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch ``[d_model, heads*d_head]`` -> ``[heads, d_head, d_model]`` (a view)."""
    return lambda w: w.reshape(w.shape[0], n_heads, d_head).transpose(1, 2, 0)


def _t(w: np.ndarray) -> np.ndarray:
    return w.T


def _ident(w: np.ndarray) -> np.ndarray:
    return w


def _bias_heads(n_heads: int, d_head: int):
    return lambda b: b.reshape(n_heads, d_head)


def _gpt2_qkv(w: np.ndarray, j: int, d: int, n_heads: int, d_head: int) -> np.ndarray:
    """Conv1D ``c_attn`` ``[d, 3d]`` (``[q | k | v]``) -> part ``j`` as ``[d, heads, d_head]``;
    its bias ``[3d]`` -> ``[heads, d_head]``."""
    if w.ndim == 1:
        return w[j * d:(j + 1) * d].reshape(n_heads, d_head)
    return w[:, j * d:(j + 1) * d].reshape(d, n_heads, d_head)


def _neox_qkv(w: np.ndarray, j: int, n_heads: int, d_head: int) -> np.ndarray:
    """``query_key_value`` ``[heads*3*d_head, d]`` (out axis ``[heads, q|k|v, d_head]``) -> part
    ``j`` as ``[d, heads, d_head]``; its bias -> ``[heads, d_head]``."""
    if w.ndim == 1:
        return w.reshape(n_heads, 3, d_head)[:, j]
    return w.reshape(n_heads, 3, d_head, -1)[:, j].transpose(2, 0, 1)


def weight_map(cfg: ModelConfig) -> Iterator[tuple[tuple, str | tuple[str, ...], Callable]]:
    """Yield ``(our_path, hf_name(s), transform)`` for every parameter of ``cfg``'s model.

    Where checkpoints differ in naming, ``hf_name`` is a tuple of accepted names.
    """
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    if cfg.arch == "llama":
        yield ("embed", "embedding"), "model.embed_tokens.weight", _ident
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            b = ("blocks", i)
            yield b + ("attn_norm", "scale"), p + "input_layernorm.weight", _ident
            yield b + ("mlp_norm", "scale"), p + "post_attention_layernorm.weight", _ident
            for n, heads in (("q", H), ("k", K), ("v", K)):
                yield b + ("attn", f"{n}_kernel"), p + f"self_attn.{n}_proj.weight", _heads_in(heads, D)
                if cfg.qkv_bias:
                    yield b + ("attn", f"{n}_bias"), p + f"self_attn.{n}_proj.bias", _bias_heads(heads, D)
            yield b + ("attn", "o_kernel"), p + "self_attn.o_proj.weight", _heads_out(H, D)
            if cfg.o_bias:
                yield b + ("attn", "o_bias"), p + "self_attn.o_proj.bias", _ident
            for n in ("gate", "up", "down"):
                yield b + ("mlp", f"{n}_kernel"), p + f"mlp.{n}_proj.weight", _t
            if cfg.mlp_bias:
                yield b + ("mlp", "up_bias"), p + "mlp.up_proj.bias", _ident
                yield b + ("mlp", "down_bias"), p + "mlp.down_proj.bias", _ident
        yield ("final_norm", "scale"), "model.norm.weight", _ident
        if not cfg.tie_embeddings:
            yield ("lm_head",), "lm_head.weight", _t
    elif cfg.arch == "gpt2":
        yield ("embed", "embedding"), "transformer.wte.weight", _ident
        yield ("pos_embed", "embedding"), "transformer.wpe.weight", _ident
        d = cfg.d_model
        for i in range(cfg.n_layers):
            p = f"transformer.h.{i}."
            b = ("blocks", i)
            yield b + ("attn_norm", "scale"), p + "ln_1.weight", _ident
            yield b + ("attn_norm", "bias"), p + "ln_1.bias", _ident
            yield b + ("mlp_norm", "scale"), p + "ln_2.weight", _ident
            yield b + ("mlp_norm", "bias"), p + "ln_2.bias", _ident
            for j, n in enumerate("qkv"):
                # Conv1D stores [in, out]; c_attn's out axis is [q | k | v].
                part = functools.partial(_gpt2_qkv, j=j, d=d, n_heads=H, d_head=D)
                yield b + ("attn", f"{n}_kernel"), p + "attn.c_attn.weight", part
                yield b + ("attn", f"{n}_bias"), p + "attn.c_attn.bias", part
            yield (b + ("attn", "o_kernel"), p + "attn.c_proj.weight",
                   lambda w: w.reshape(H, D, -1))
            yield b + ("attn", "o_bias"), p + "attn.c_proj.bias", _ident
            yield b + ("mlp", "up_kernel"), p + "mlp.c_fc.weight", _ident
            yield b + ("mlp", "up_bias"), p + "mlp.c_fc.bias", _ident
            yield b + ("mlp", "down_kernel"), p + "mlp.c_proj.weight", _ident
            yield b + ("mlp", "down_bias"), p + "mlp.c_proj.bias", _ident
        yield ("final_norm", "scale"), "transformer.ln_f.weight", _ident
        yield ("final_norm", "bias"), "transformer.ln_f.bias", _ident
        if not cfg.tie_embeddings:
            yield ("lm_head",), "lm_head.weight", _t
    elif cfg.arch == "neox":
        yield ("embed", "embedding"), "gpt_neox.embed_in.weight", _ident
        for i in range(cfg.n_layers):
            p = f"gpt_neox.layers.{i}."
            b = ("blocks", i)
            yield b + ("attn_norm", "scale"), p + "input_layernorm.weight", _ident
            yield b + ("attn_norm", "bias"), p + "input_layernorm.bias", _ident
            yield b + ("mlp_norm", "scale"), p + "post_attention_layernorm.weight", _ident
            yield b + ("mlp_norm", "bias"), p + "post_attention_layernorm.bias", _ident
            for j, n in enumerate("qkv"):
                # query_key_value's out axis is [heads, (q|k|v), head_dim].
                part = functools.partial(_neox_qkv, j=j, n_heads=H, d_head=D)
                yield b + ("attn", f"{n}_kernel"), p + "attention.query_key_value.weight", part
                if cfg.qkv_bias:
                    yield b + ("attn", f"{n}_bias"), p + "attention.query_key_value.bias", part
            yield b + ("attn", "o_kernel"), p + "attention.dense.weight", _heads_out(H, D)
            if cfg.o_bias:
                yield b + ("attn", "o_bias"), p + "attention.dense.bias", _ident
            yield b + ("mlp", "up_kernel"), p + "mlp.dense_h_to_4h.weight", _t
            yield b + ("mlp", "up_bias"), p + "mlp.dense_h_to_4h.bias", _ident
            yield b + ("mlp", "down_kernel"), p + "mlp.dense_4h_to_h.weight", _t
            yield b + ("mlp", "down_bias"), p + "mlp.dense_4h_to_h.bias", _ident
        yield ("final_norm", "scale"), "gpt_neox.final_layer_norm.weight", _ident
        yield ("final_norm", "bias"), "gpt_neox.final_layer_norm.bias", _ident
        if not cfg.tie_embeddings:
            # Pythia checkpoints call it embed_out; transformers >= 5 saves lm_head.
            yield ("lm_head",), ("embed_out.weight", "lm_head.weight"), _t
    else:  # pragma: no cover - ModelConfig validates arch
        raise ValueError(f"unknown architecture {cfg.arch!r}")


def _variable(model: nnx.Module, path: tuple) -> tuple[nnx.Variable, int | None]:
    """The variable at ``path`` and the layer it holds there (the block stack keeps every
    layer of a parameter in one variable: ``("blocks", 3, "attn", "q_kernel")`` is layer 3
    of ``blocks.attn.q_kernel``), or None for a parameter outside the stack."""
    node, layer = model, None
    for key in path:
        if isinstance(key, int):
            layer = key
        else:
            node = getattr(node, key)
    return node, layer


def assign_weights(model: nnx.Module, tensors: dict, source: str = "checkpoint",
                   pop: bool = True) -> None:
    """Copy Hugging Face ``tensors`` into ``model`` (possibly built with ``nnx.eval_shape``).

    Per-layer tensors are written into the block stack's ``[n_layers, ...]`` parameters: each
    layer's value goes to the device as it is read, and a parameter's layers are stacked once
    all are there (peak memory: the weights plus one stacked parameter).

    Raises :class:`WeightShapeError` naming ``source`` and the tensor when a tensor is missing
    or its shape does not fit. With ``pop`` the numpy tensors are released as they are copied
    (keeps peak memory near one copy of the weights).
    """
    cfg: ModelConfig = model.config
    plan = list(weight_map(cfg))
    def pick(names):
        names = (names,) if isinstance(names, str) else names
        return next((n for n in names if n in tensors), names[0])

    plan = [(path, pick(names), fn) for path, names, fn in plan]
    last_use = {name: i for i, (_, name, _) in enumerate(plan)}
    layers_of: dict[int, dict[int, jnp.ndarray]] = {}  # id(stacked variable) -> {layer: value}
    for i, (path, name, fn) in enumerate(plan):
        if name not in tensors:
            raise WeightShapeError(f"{source}: missing tensor {name!r} for {cfg.arch} model")
        var, layer = _variable(model, path)
        w = tensors[name]
        try:
            value = fn(np.asarray(w))
        except ValueError as e:
            raise WeightShapeError(
                f"{source}: tensor {name!r} has shape {tuple(np.shape(w))}, which does not fit "
                f"the config ({e})"
            ) from e
        expect = tuple(var.shape) if layer is None else tuple(var.shape[1:])
        if tuple(value.shape) != expect:
            raise WeightShapeError(
                f"{source}: tensor {name!r} has shape {tuple(np.shape(w))}; the config needs "
                f"{expect} at {'.'.join(map(str, path))}"
            )
        if layer is None:
            var.set_value(jnp.asarray(value, dtype=var.dtype))
        else:
            got = layers_of.setdefault(id(var), {})
            got[layer] = jnp.asarray(value, dtype=var.dtype)
            if len(got) == var.shape[0]:  # every layer read: stack them into the parameter
                del layers_of[id(var)]
                var.set_value(jnp.stack([got.pop(i) for i in range(var.shape[0])]))
        if pop and last_use[name] == i:
            del tensors[name]


def _grouped_plan(cfg: ModelConfig, tensors) -> dict[tuple, list[tuple[int | None, str, Callable]]]:
    """``{variable path: [(layer or None, tensor name, transform), ...]}`` in plan order."""
    def pick(names):
        names = (names,) if isinstance(names, str) else names
        return next((n for n in names if n in tensors), names[0])

    out: dict[tuple, list] = {}
    for path, names, fn in weight_map(cfg):
        layer = next((k for k in path if isinstance(k, int)), None)
        var_path = tuple(k for k in path if not isinstance(k, int))
        out.setdefault(var_path, []).append((layer, pick(names), fn))
    return out


def _shape_of(fn: Callable, shape: tuple[int, ...], dtype) -> tuple[int, ...]:
    """The shape ``fn`` maps a tensor of ``shape`` to, computed on a zero-stride stand-in
    (no memory: the transforms are views)."""
    return tuple(fn(np.broadcast_to(np.zeros((), dtype), shape)).shape)


def assign_sharded(model: nnx.Module, tensors: dict, sharding_for: Callable, source: str = "checkpoint",
                   dtype=None) -> None:
    """Fill ``model`` (built with ``nnx.eval_shape``) with parameters created on their devices.

    Every parameter is made with the sharding ``sharding_for(variable)`` returns from the slices
    this process's devices hold (``jax.make_array_from_callback`` semantics): for a block-stack
    parameter ``[n_layers, ...]`` each layer's tensor is read once, transformed (as a view),
    and only the local devices' slices are copied out of it. With
    :class:`~common.weights.lazy.LazyTensor` handles (memory-mapped safetensors) the host holds
    at most the local shards of the parameter being built besides the ones already on their
    devices; on a multi-host mesh each process reads only what its devices hold.

    Args:
      model: an abstract :class:`~common.models.DecoderLM` (``nnx.eval_shape``).
      tensors: Hugging Face names -> arrays or lazy handles (anything with ``shape`` and
        ``read()``, or numpy arrays).
      sharding_for: ``nnx.Variable -> jax.sharding.Sharding``.
      dtype: the parameters' dtype (default: each variable's own).

    Raises:
      WeightShapeError: a missing tensor or one whose shape does not fit, naming ``source``.
    """
    cfg: ModelConfig = model.config
    for var_path, entries in _grouped_plan(cfg, tensors).items():
        var, _ = _variable(model, var_path)
        want = np.dtype(dtype or var.dtype)
        stacked = entries[0][0] is not None
        expect = tuple(var.shape[1:]) if stacked else tuple(var.shape)
        for layer, name, fn in entries:
            if name not in tensors:
                raise WeightShapeError(f"{source}: missing tensor {name!r} for {cfg.arch} model")
            t = tensors[name]
            try:
                got = _shape_of(fn, tuple(t.shape), np.float32)
            except ValueError as e:
                raise WeightShapeError(
                    f"{source}: tensor {name!r} has shape {tuple(t.shape)}, which does not fit "
                    f"the config ({e})") from e
            if got != expect:
                where = ".".join(map(str, var_path)) + ("" if layer is None else f"[{layer}]")
                raise WeightShapeError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}; "
                                       f"the config needs {expect} at {where}")
        by_layer = {layer: (name, fn) for layer, name, fn in entries}
        var.set_value(_sharded_array(var, by_layer, tensors, sharding_for(var), want, stacked))


def _index_key(index: tuple) -> tuple:
    return tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in index)


def _sharded_array(var, by_layer: dict, tensors: dict, sharding, want: np.dtype, stacked: bool):
    """One parameter as a global array with ``sharding``, built from the slices this process's
    devices hold: each stored tensor is read once (a memory-mapped view, or one dequantised
    GGUF tensor), every distinct local slice copied out of it, and each slice put on its
    device(s) (``jax.make_array_from_single_device_arrays``; the semantics of
    ``jax.make_array_from_callback``, with one read per tensor instead of one per device)."""
    import jax

    shape = tuple(var.shape)
    by_device = sharding.addressable_devices_indices_map(shape)
    slices: dict[tuple, tuple] = {}  # distinct local index -> the index (replicas share one)
    for index in by_device.values():
        slices.setdefault(_index_key(index), tuple(index))

    def read(name):
        t = tensors[name]
        return t.read() if hasattr(t, "read") else np.asarray(t)

    if not stacked:
        name, fn = by_layer[None]
        full = fn(read(name))
        parts = {k: np.asarray(full[index], dtype=want) for k, index in slices.items()}
        del full
    else:
        n = shape[0]
        layers_of = {k: range(n)[index[0]] for k, index in slices.items()}
        parts = {k: np.empty((len(layers_of[k]),) + tuple(
            len(range(d)[i]) for d, i in zip(shape[1:], index[1:], strict=True)), want)
            for k, index in slices.items()}
        for layer in range(n):
            wanted = [k for k in slices if layer in layers_of[k]]
            if not wanted:
                continue
            name, fn = by_layer[layer]
            full = fn(read(name))
            for k in wanted:
                parts[k][layers_of[k].index(layer)] = full[slices[k][1:]]  # copies the slice
            del full
    arrays = [jax.device_put(parts[_index_key(index)], device)
              for device, index in by_device.items()]
    del parts
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)

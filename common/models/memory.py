"""Memory planning without the hardware: per-device bytes of a sharded model's parameters, KV
cache and captured sites, for a Hugging Face config and a mesh shape.

    cfg = hf_model_config(NAMED_CONFIGS["llama3-8b"])           # or a config.json path
    plan = plan_memory(cfg, {"fsdp": 4, "tensor": 4}, batch=8, seq=2048, sites=("z",))
    plan.per_device_bytes, plan.describe()

Every array is placed by the same logical-axis rules the loader and the training path use
(:func:`common.sharding.logical_to_spec` on an abstract mesh of the given shape), so a
dimension the mesh does not divide is counted replicated, as it would be placed. Nothing is
allocated: parameter shapes come from ``nnx.eval_shape``. The estimate counts what the forward
keeps alive (parameters, the KV cache if one is asked for, the captured values and the logits);
the compiler's temporaries (one layer's activations at a time in the scanned forward) come on
top and are what the ahead-of-time compile of ``tpu/aot_forward.py`` reports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from common.attention.hooks import SITE_AXES
from common.models.capture import SITE_LOGICAL, capture_store, resolve_layers, resolve_sites
from common.models.config import ModelConfig, config_from_hf
from common.models.decoder import DecoderLM
from common.sharding.mesh import AXES
from common.sharding.rules import DEFAULT_RULES, Rules, logical_names_of, logical_to_spec

NAMED_CONFIGS: dict[str, dict] = {
    "llama3-8b": {  # meta-llama/Meta-Llama-3-8B config.json
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001},
    "llama2-70b": {  # meta-llama/Llama-2-70b-hf config.json
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 32000, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2},
    "qwen2-7b": {  # Qwen/Qwen2-7B config.json
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643},
}
"""Hugging Face ``config.json`` contents of the papers' model sizes (a test writes them as
files; :func:`hf_model_config` reads either)."""

_BYTES = {"float32": 4, "bfloat16": 2}


def hf_model_config(config: str | os.PathLike | Mapping, *, dtype: str = "bfloat16",
                    **overrides) -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face config: a name of :data:`NAMED_CONFIGS`, a
    ``config.json`` path (or its folder) or its contents as a dict.

    Raises:
      ValueError (``WeightsError``): unknown name, unreadable file, unknown architecture.
    """
    from common.weights.errors import WeightsError
    from common.weights.loaded_checkpoint import arch_of, normalise_config

    if isinstance(config, str) and config in NAMED_CONFIGS:
        config = NAMED_CONFIGS[config]
    if not isinstance(config, Mapping):
        path = pathlib.Path(config).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise WeightsError(f"{path}: no such config.json (named configs: "
                               f"{', '.join(NAMED_CONFIGS)})")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{path}: not JSON ({e})") from None
    arch = arch_of(config.get("model_type"), "config")
    return config_from_hf(arch, normalise_config(dict(config), arch), dtype=dtype, **overrides)


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
    """A mesh of the four axes with the given degrees (missing axes 1), without devices."""
    bad = sorted(set(shape) - set(AXES))
    if bad:
        raise ValueError(f"mesh shape: unknown axes {bad}; known: {AXES}")
    sizes = tuple(int(shape.get(a, 1)) for a in AXES)
    return AbstractMesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def shard_bytes(shape: tuple[int, ...], itemsize: int, names, mesh, rules: Rules) -> int:
    """Bytes one device holds of an array of ``shape`` whose axes carry logical ``names``."""
    spec = logical_to_spec(names, rules, mesh, shape)
    n = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        split = 1 if axes is None else math.prod(
            mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        n *= -(-dim // split)
    return n * itemsize


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of a sharded forward (see :func:`plan_memory`).

    Attributes:
      mesh: the mesh degrees; devices: their product.
      n_params: parameters of the whole model; param_bytes_total: their bytes.
      params, kv_cache, captures, logits: bytes one device holds of each (the largest over
        devices: a replicated array counts whole on every device).
      sites: per captured site, its bytes on one device (all captured layers).
    """

    mesh: dict
    devices: int
    n_params: int
    param_bytes_total: int
    params: int
    kv_cache: int
    captures: int
    logits: int
    sites: dict

    @property
    def per_device_bytes(self) -> int:
        return self.params + self.kv_cache + self.captures + self.logits

    def fits(self, hbm_bytes: float) -> bool:
        return self.per_device_bytes <= hbm_bytes

    def describe(self) -> str:
        g = 2**30
        return (f"{self.n_params / 1e9:.2f}B params ({self.param_bytes_total / g:.1f} GiB) on "
                f"{self.devices} devices: per device params {self.params / g:.2f} GiB, KV cache "
                f"{self.kv_cache / g:.2f} GiB, captures {self.captures / g:.2f} GiB, logits "
                f"{self.logits / g:.2f} GiB; total {self.per_device_bytes / g:.2f} GiB")


def site_itemsizes(model, sites: tuple[str, ...]) -> dict[str, int]:
    """Bytes per element of each captured site, as the model's capture produces them (traced
    abstractly on a ``[1, 2]`` input: ``pattern`` and ``attn_scores`` are float32 whatever
    the compute dtype)."""
    graphdef, state = nnx.split(model)

    def run(st, ids):
        return capture_store(nnx.merge(graphdef, st), ids, None, None, None, sites, (0,), True)

    _, store = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, 2), np.int32))
    return {site: np.dtype(v.dtype).itemsize for (site, _), v in store.items()}


def site_shape(cfg: ModelConfig, site: str, batch: int, seq: int) -> tuple[int, ...]:
    """One layer's value of ``site`` for ``[batch, seq]`` inputs."""
    size = {"batch": batch, "pos": seq, "query_pos": seq, "key_pos": seq, "head": cfg.n_heads,
            "kv_head": cfg.n_kv_heads, "d_head": cfg.d_head, "d_model": cfg.d_model,
            "d_mlp": cfg.d_mlp}
    return tuple(size[a] for a in SITE_AXES[site])


def plan_memory(
    cfg: ModelConfig,
    mesh_shape: Mapping[str, int],
    *,
    batch: int,
    seq: int,
    sites: Iterable[str] | str = (),
    layers: Iterable[int] | int | None = None,
    kv_len: int = 0,
    last_only: bool = True,
    rules: Rules = DEFAULT_RULES,
    param_dtype: str | None = None,
) -> MemoryPlan:
    """Per-device bytes of ``cfg``'s model sharded on a mesh of ``mesh_shape`` by ``rules``.

    Args:
      cfg: the model (``cfg.dtype`` is the compute dtype of the cache and the captures).
      mesh_shape: degrees of ``data, fsdp, tensor, context`` (missing: 1).
      batch, seq: the input ``[batch, seq]``.
      sites, layers: captured sites (site names; ``()`` none) at these layers (default all).
      kv_len: a KV cache of this length (0: none), ``[layers, batch, kv_len, kv_heads,
        d_head]`` for keys and for values.
      last_only: the logits of the last position only (else of every position), float32.
      param_dtype: the parameters' dtype (default ``cfg.dtype``).
    """
    mesh = abstract_mesh(mesh_shape)
    p_item = _BYTES[param_dtype or cfg.dtype]
    c_item = _BYTES[cfg.dtype]
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    n_params = params = 0
    for var in jax.tree.leaves(nnx.state(model, nnx.Param),
                               is_leaf=lambda x: isinstance(x, nnx.Variable)):
        shape = tuple(var.shape)
        n_params += int(np.prod(shape))
        params += shard_bytes(shape, p_item, logical_names_of(var), mesh, rules)
    kv = 0
    if kv_len:
        kv = 2 * shard_bytes((cfg.n_layers, batch, kv_len, cfg.n_kv_heads, cfg.d_head), c_item,
                             (None, "batch", "seq", "kv_heads", "head_dim"), mesh, rules)
    per_site: dict[str, int] = {}
    chosen = resolve_layers(layers, cfg.n_layers)
    sites = resolve_sites(sites)
    itemsize = site_itemsizes(model, sites) if sites else {}
    for site in sites:
        shape = site_shape(cfg, site, batch, seq)
        names = tuple(SITE_LOGICAL.get(a) for a in SITE_AXES[site])
        item = itemsize[site]
        n = 1 if site == "ln_final_scale" else len(chosen)
        per_site[site] = n * shard_bytes(shape, item, names, mesh, rules)
    logits = shard_bytes((batch, 1 if last_only else seq, cfg.vocab_size), 4,
                         ("batch", "seq", "vocab"), mesh, rules)
    return MemoryPlan(mesh={a: int(mesh.shape[a]) for a in AXES}, devices=int(mesh.size),
                      n_params=n_params, param_bytes_total=n_params * p_item, params=params,
                      kv_cache=kv, captures=sum(per_site.values()), logits=logits,
                      sites=per_site)

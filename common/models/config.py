"""Decoder-LM configuration: one dataclass for the Llama family, GPT-2 and GPT-NeoX/Pythia."""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHS = ("llama", "gpt2", "neox")
DTYPES = ("float32", "bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only LM.

    Attributes:
      arch: ``llama`` (Llama 2/3, Mistral, Qwen2, SmolLM2), ``gpt2`` or ``neox`` (Pythia).
      vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_head, d_mlp: sizes.
      norm: ``rms`` or ``layer``; norm_eps: its epsilon.
      act: ``silu``, ``gelu`` (exact) or ``gelu_tanh``; gated_mlp: SwiGLU-style gate.
      pos: ``rope`` or ``learned``; rope_theta, rotary_dim (None = full head), rope_scaling.
      max_position: learned position table size (GPT-2) / nominal context.
      parallel_residual: GPT-NeoX ``x + attn(ln1 x) + mlp(ln2 x)``.
      tie_embeddings: unembedding is the transposed token embedding.
      qkv_bias, o_bias, mlp_bias: which projections carry biases.
      attn_backend: attention backend (``auto``, ``reference``, ``cpu``, ``xla``, ``cudnn``,
        ``pallas``; see :mod:`common.attention.backends`).
      dtype: compute dtype: ``float32``, ``bfloat16`` (norms, RoPE, softmax and logits still
        accumulate in float32) or ``float64`` (parameters and every computation in float64;
        for checks against references at ~1e-12). ``float64`` needs 64-bit JAX:
        ``jax.config.update("jax_enable_x64", True)``, or build and run the model under
        ``with jax.enable_x64(True):``; without it the config (and the model) refuse it
        with a ValueError instead of silently computing in float32. Logits are float32
        (float64 for a float64 model).
      scan_layers: scan the forward over the stacked blocks (compile time independent of
        depth); False unrolls a Python loop over layers (debugging; the same numbers).
      remat: rematerialisation policy of each layer for training (``none``, ``full``,
        ``save_dots``, ``save_dots_no_batch`` or a ``jax.checkpoint_policies`` name; see
        :data:`common.models.layer_stack.REMAT_POLICIES`).
    """

    arch: str = "llama"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_mlp: int = 128
    norm: str = "rms"
    norm_eps: float = 1e-5
    act: str = "silu"
    gated_mlp: bool = True
    pos: str = "rope"
    rope_theta: float = 10000.0
    rotary_dim: int | None = None
    rope_scaling: tuple | None = None
    max_position: int = 2048
    parallel_residual: bool = False
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    attn_backend: str = "auto"
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    scan_layers: bool = True
    remat: str = "none"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch: unknown architecture {self.arch!r}; known: {ARCHS}")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"ModelConfig: d_model ({self.d_model}) not divisible by n_heads ({self.n_heads})"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"ModelConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig: n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                f"({self.n_kv_heads})"
            )
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"ModelConfig.norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.act not in ("silu", "gelu", "gelu_tanh", "relu"):
            raise ValueError(f"ModelConfig.act: unknown activation {self.act!r}")
        if self.pos not in ("rope", "learned"):
            raise ValueError(f"ModelConfig.pos must be 'rope' or 'learned', got {self.pos!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"ModelConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.check_dtype_enabled()
        from common.models.layer_stack import check_remat  # lazy: config imports no JAX

        check_remat(self.remat)
        if self.rotary_dim is not None and (self.rotary_dim % 2 or self.rotary_dim > self.d_head):
            raise ValueError(f"ModelConfig.rotary_dim ({self.rotary_dim}) must be even and <= d_head")

    def check_dtype_enabled(self) -> None:
        """Raise ValueError for ``dtype="float64"`` while JAX runs without 64-bit types (its
        arrays would silently be float32)."""
        if self.dtype != "float64":
            return
        import jax  # lazy: config imports no JAX
        import numpy as np

        if jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
            raise ValueError('ModelConfig.dtype="float64" needs 64-bit JAX: call '
                             'jax.config.update("jax_enable_x64", True) first (or build and run the '
                             "model under `with jax.enable_x64(True):`)")

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def _rope_scaling(hf: dict) -> tuple | None:
    rs = hf.get("rope_scaling") or hf.get("rope_parameters")
    if not isinstance(rs, dict):
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(f"config.json: rope scaling {kind!r} is not supported (only llama3)")
    keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return tuple(sorted((k, float(rs[k])) for k in keep if k in rs))


def config_from_hf(arch: str, hf: dict, **overrides: Any) -> ModelConfig:
    """Build a :class:`ModelConfig` from a Hugging Face ``config.json`` dict.

    The dict is first completed by ``common.weights.loaded_checkpoint.normalise_config`` (transformers'
    class defaults; ``rope_theta`` and NeoX's ``rotary_pct`` lifted out of ``rope_parameters``).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {ARCHS}")
    from common.weights.loaded_checkpoint import normalise_config  # lazy: keeps model import light

    hf = normalise_config(hf, arch)
    try:
        if arch == "llama":
            heads = hf["num_attention_heads"]
            d = hf["hidden_size"]
            act = hf["hidden_act"]
            cfg = dict(
                vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
                d_head=hf.get("head_dim") or d // heads, d_mlp=hf["intermediate_size"],
                norm="rms", norm_eps=hf["rms_norm_eps"],
                act={"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}[act],
                gated_mlp=True, pos="rope", rope_theta=float(hf["rope_theta"]),
                rope_scaling=_rope_scaling(hf),
                max_position=hf["max_position_embeddings"],
                tie_embeddings=bool(hf["tie_word_embeddings"]),
                qkv_bias=bool(hf.get("attention_bias", hf.get("model_type") == "qwen2")),
                o_bias=bool(hf.get("attention_bias", False)) and hf.get("model_type") != "qwen2",
                mlp_bias=bool(hf.get("mlp_bias", False)),
            )
        elif arch == "gpt2":
            d = hf["n_embd"]
            cfg = dict(
                vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                n_heads=hf["n_head"], d_mlp=hf.get("n_inner") or 4 * d, norm="layer",
                norm_eps=hf["layer_norm_epsilon"],
                act={"gelu_new": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                     "gelu_pytorch_tanh": "gelu_tanh"}[hf["activation_function"]],
                gated_mlp=False, pos="learned", max_position=hf["n_positions"],
                tie_embeddings=bool(hf["tie_word_embeddings"]), qkv_bias=True,
                o_bias=True, mlp_bias=True,
            )
        elif arch == "neox":
            d = hf["hidden_size"]
            heads = hf["num_attention_heads"]
            d_head = d // heads
            cfg = dict(
                vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                n_heads=heads, d_mlp=hf["intermediate_size"], norm="layer",
                norm_eps=hf["layer_norm_eps"],
                act={"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "relu": "relu"}[hf["hidden_act"]],
                gated_mlp=False, pos="rope", rope_theta=float(hf["rope_theta"]),
                rotary_dim=int(d_head * float(hf["rotary_pct"])),
                max_position=hf["max_position_embeddings"],
                parallel_residual=bool(hf["use_parallel_residual"]),
                tie_embeddings=bool(hf["tie_word_embeddings"]),
                qkv_bias=bool(hf.get("attention_bias", True)), o_bias=bool(hf.get("attention_bias", True)),
                mlp_bias=True,
            )
    except KeyError as e:
        raise ValueError(f"config.json for {arch}: missing field {e.args[0]!r}") from e
    cfg.update(arch=arch, bos_token_id=hf.get("bos_token_id"))
    eos = hf.get("eos_token_id")
    cfg["eos_token_id"] = tuple(eos) if isinstance(eos, list) else eos
    cfg.update(overrides)
    return ModelConfig(**cfg)

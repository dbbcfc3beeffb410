"""The in-memory checkpoint every loader returns, and its checks against the config.

A :class:`Checkpoint` holds Hugging Face ``config.json`` keys and parameter tensors under Hugging
Face names in torch layouts (``nn.Linear`` weights ``[out, in]``; GPT-2's ``Conv1D`` weights
``[in, out]``), whatever file they came from. :func:`check_tensors` compares every tensor with the
shape the config implies, so a mismatch is reported here, naming the file and the tensor, instead
of surfacing later as a broadcasting error inside the model.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from common.weights.errors import WeightsError

if TYPE_CHECKING:
    from common.weights.tokenizer import Tokenizer

# Hugging Face ``model_type`` -> the architecture family our models implement.
ARCH_OF_MODEL_TYPE = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt2": "gpt2",
    "gpt_neox": "neox",
}

# Prefix of the base model's parameters, per family (``model.`` in LlamaForCausalLM, ...).
BASE_PREFIX = {"llama": "model.", "gpt2": "transformer.", "neox": "gpt_neox."}

# Name of the output projection when the embeddings are not tied.
HEAD_NAME = {"llama": "lm_head.weight", "gpt2": "lm_head.weight", "neox": "embed_out.weight"}

# Buffers some checkpoints carry that are not parameters (causal-mask and RoPE caches).
_BUFFER = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|"
                     r"\.attention\.masked_bias|rotary_emb\.inv_freq)$")

# transformers' class defaults for keys a config.json may leave out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 2048, "hidden_act": "silu"},
    "gpt2": {"layer_norm_epsilon": 1e-5, "n_positions": 1024, "tie_word_embeddings": True,
             "activation_function": "gelu_new"},
    "neox": {"layer_norm_eps": 1e-5, "rope_theta": 10000.0, "rotary_pct": 0.25,
             "use_parallel_residual": True, "tie_word_embeddings": False, "hidden_act": "gelu",
             "max_position_embeddings": 2048},
}


@dataclasses.dataclass
class Checkpoint:
    """Weights, config and tokenizer of a pretrained model, independent of the file format.

    Attributes:
      arch: ``"llama"`` (Llama, Mistral, Qwen2, SmolLM2), ``"gpt2"`` or ``"neox"``.
      config: Hugging Face ``config.json`` keys, completed by :func:`normalise_config`.
      tensors: Hugging Face parameter names -> arrays in torch layout.
      tokenizer: the tokenizer, or ``None`` if the source has none.
      source: the ``.gguf`` file or the folder loaded.
    """

    arch: str
    config: dict
    tensors: dict[str, np.ndarray]
    tokenizer: Tokenizer | None
    source: pathlib.Path

    def require_tokenizer(self) -> Tokenizer:
        """The tokenizer, or a :class:`WeightsError` saying which file was expected."""
        if self.tokenizer is None:
            where = (self.source / "tokenizer.json" if self.source.is_dir()
                     else f"{self.source} (tokenizer.ggml.* metadata)")
            raise WeightsError(f"{where}: no tokenizer found; this checkpoint has weights only")
        return self.tokenizer


def arch_of(model_type: Any, source: str | pathlib.Path) -> str:
    """The architecture family of a Hugging Face ``model_type``, or a :class:`WeightsError`."""
    arch = ARCH_OF_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise WeightsError(
            f"{source}: unknown architecture model_type={model_type!r}; supported: "
            f"{', '.join(sorted(ARCH_OF_MODEL_TYPE))}"
        )
    return arch


def normalise_config(config: dict, arch: str) -> dict:
    """Complete ``config`` with the keys the models read, without changing any present value.

    Fills transformers' class defaults for absent keys, lifts ``rope_theta`` and the partial
    rotary fraction out of transformers 5's ``rope_parameters``, and gives GPT-2 configs the
    generic names (``hidden_size``, ``num_hidden_layers``, ...) next to ``n_embd``, ``n_layer``.
    """
    cfg = dict(config)
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    if "rope_theta" not in cfg:
        if rope.get("rope_theta") is not None:
            cfg["rope_theta"] = rope["rope_theta"]
        elif "rotary_emb_base" in cfg:
            cfg["rope_theta"] = cfg["rotary_emb_base"]
    if arch == "neox" and "rotary_pct" not in cfg:
        pct = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor"))
        if pct is not None:
            cfg["rotary_pct"] = pct
    if arch == "gpt2":
        for generic, own in (("hidden_size", "n_embd"), ("num_hidden_layers", "n_layer"),
                             ("num_attention_heads", "n_head"),
                             ("max_position_embeddings", "n_positions")):
            if own in cfg:
                cfg.setdefault(generic, cfg[own])
    for key, value in _DEFAULTS[arch].items():
        cfg.setdefault(key, value)
    if arch == "gpt2":
        cfg.setdefault("max_position_embeddings", cfg["n_positions"])
        if cfg.get("n_inner") is None and "n_embd" in cfg:
            cfg.setdefault("intermediate_size", 4 * cfg["n_embd"])
        elif cfg.get("n_inner") is not None:
            cfg.setdefault("intermediate_size", cfg["n_inner"])
    if arch == "llama" and "num_attention_heads" in cfg:
        cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        if cfg.get("head_dim") is None and "hidden_size" in cfg:
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg


def _int_key(config: dict, key: str, source: Any) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise WeightsError(f"{source}: config key {key!r} must be a positive integer, "
                           f"got {value!r}")
    return value


def expected_shapes(arch: str, config: dict, source: Any = "config") -> dict[str, tuple | None]:
    """Every parameter name the config implies -> its shape (``None``: optional, any shape).

    Shapes are the torch layouts of the Hugging Face modules.
    """
    get = lambda k: _int_key(config, k, source)  # noqa: E731
    shapes: dict[str, tuple] = {}
    pre = BASE_PREFIX[arch]
    if arch == "llama":
        d, v, m = get("hidden_size"), get("vocab_size"), get("intermediate_size")
        h, kv = get("num_attention_heads"), get("num_key_value_heads")
        hd = get("head_dim")
        qwen2 = config.get("model_type") == "qwen2"
        qkv_bias = qwen2 or bool(config.get("attention_bias", False))
        o_bias = bool(config.get("attention_bias", False)) and not qwen2
        mlp_bias = bool(config.get("mlp_bias", False))
        shapes[pre + "embed_tokens.weight"] = (v, d)
        shapes[pre + "norm.weight"] = (d,)
        for i in range(get("num_hidden_layers")):
            p = f"{pre}layers.{i}."
            shapes[p + "input_layernorm.weight"] = (d,)
            shapes[p + "post_attention_layernorm.weight"] = (d,)
            for n, rows in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
                shapes[p + f"self_attn.{n}_proj.weight"] = (rows, d)
                if qkv_bias:
                    shapes[p + f"self_attn.{n}_proj.bias"] = (rows,)
            shapes[p + "self_attn.o_proj.weight"] = (d, h * hd)
            if o_bias:
                shapes[p + "self_attn.o_proj.bias"] = (d,)
            shapes[p + "mlp.gate_proj.weight"] = (m, d)
            shapes[p + "mlp.up_proj.weight"] = (m, d)
            shapes[p + "mlp.down_proj.weight"] = (d, m)
            if mlp_bias:
                shapes[p + "mlp.gate_proj.bias"] = (m,)
                shapes[p + "mlp.up_proj.bias"] = (m,)
                shapes[p + "mlp.down_proj.bias"] = (d,)
    elif arch == "gpt2":
        d, v, m = get("n_embd"), get("vocab_size"), get("intermediate_size")
        shapes[pre + "wte.weight"] = (v, d)
        shapes[pre + "wpe.weight"] = (get("n_positions"), d)
        shapes[pre + "ln_f.weight"] = shapes[pre + "ln_f.bias"] = (d,)
        for i in range(get("n_layer")):
            p = f"{pre}h.{i}."
            for ln in ("ln_1", "ln_2"):
                shapes[p + ln + ".weight"] = shapes[p + ln + ".bias"] = (d,)
            shapes[p + "attn.c_attn.weight"] = (d, 3 * d)  # Conv1D: [in, out]
            shapes[p + "attn.c_attn.bias"] = (3 * d,)
            shapes[p + "attn.c_proj.weight"] = (d, d)
            shapes[p + "attn.c_proj.bias"] = (d,)
            shapes[p + "mlp.c_fc.weight"] = (d, m)
            shapes[p + "mlp.c_fc.bias"] = (m,)
            shapes[p + "mlp.c_proj.weight"] = (m, d)
            shapes[p + "mlp.c_proj.bias"] = (d,)
    elif arch == "neox":
        d, v, m = get("hidden_size"), get("vocab_size"), get("intermediate_size")
        bias = bool(config.get("attention_bias", True))
        shapes[pre + "embed_in.weight"] = (v, d)
        shapes[pre + "final_layer_norm.weight"] = shapes[pre + "final_layer_norm.bias"] = (d,)
        for i in range(get("num_hidden_layers")):
            p = f"{pre}layers.{i}."
            for ln in ("input_layernorm", "post_attention_layernorm"):
                shapes[p + ln + ".weight"] = shapes[p + ln + ".bias"] = (d,)
            shapes[p + "attention.query_key_value.weight"] = (3 * d, d)
            shapes[p + "attention.dense.weight"] = (d, d)
            if bias:
                shapes[p + "attention.query_key_value.bias"] = (3 * d,)
                shapes[p + "attention.dense.bias"] = (d,)
            shapes[p + "mlp.dense_h_to_4h.weight"] = (m, d)
            shapes[p + "mlp.dense_h_to_4h.bias"] = (m,)
            shapes[p + "mlp.dense_4h_to_h.weight"] = (d, m)
            shapes[p + "mlp.dense_4h_to_h.bias"] = (d,)
    else:
        raise WeightsError(f"{source}: unknown architecture {arch!r}")
    head = HEAD_NAME[arch]
    # Tied models may still store a copy of the embedding as the head; it is then optional.
    shapes[head] = None if config.get("tie_word_embeddings") else (v, d)
    return shapes


def canonical_name(name: str, arch: str) -> str:
    """Map naming variants onto the names :func:`expected_shapes` uses.

    Base-model checkpoints (``GPT2Model``, ``LlamaModel``) store names without the prefix
    (``h.0.attn.c_attn.weight``), and transformers 5 saves GPT-NeoX's head as ``lm_head.weight``
    where Pythia checkpoints say ``embed_out.weight``.
    """
    pre = BASE_PREFIX[arch]
    if arch == "neox" and name == "lm_head.weight":
        return "embed_out.weight"
    if name == HEAD_NAME[arch] or name.startswith(pre):
        return name
    return pre + name


def check_tensors(tensors: dict[str, np.ndarray], arch: str, config: dict,
                  source: Any) -> dict[str, np.ndarray]:
    """Rename to canonical names, drop non-parameter buffers and check every shape.

    Raises:
      WeightsError: a tensor is missing, unexpected, or of the wrong shape; the message names
        ``source``, the tensor, its shape and the shape the config implies.
    """
    expected = expected_shapes(arch, config, source)
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        key = canonical_name(name, arch)
        if key not in expected and _BUFFER.search(key):
            continue
        if key not in expected:
            raise WeightsError(
                f"{source}: unexpected tensor {name!r} {tuple(array.shape)}: not a parameter of a "
                f"{arch} model with this config (model_type={config.get('model_type')!r})"
            )
        want = expected[key]
        if want is not None and tuple(array.shape) != want:
            raise WeightsError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, but the config "
                f"implies {want}"
            )
        out[key] = array
    missing = [n for n, shape in expected.items() if shape is not None and n not in out]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{source}: missing tensor(s) {missing[:3]}{more} for a {arch} "
                           f"model with this config")
    return out

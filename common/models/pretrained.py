"""``load_pretrained``: a model name, a ``.gguf`` file or a Hugging Face folder -> (model, tokenizer);
with ``mesh=``, the parameters sharded over the mesh, read slice by slice onto their devices."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from common.models.compile_cache import enable as enable_compilation_cache
from common.models.config import config_from_hf
from common.models.convert import assign_sharded, assign_weights
from common.models.decoder import DecoderLM

KNOWN_MODELS = ("smollm2-135m-instruct",)


def build_model(checkpoint, *, dtype: str = "float32", attn_backend: str = "auto") -> DecoderLM:
    """A :class:`DecoderLM` holding a loaded ``common.weights.Checkpoint``'s tensors.

    The model is built abstractly (no random init) and filled tensor by tensor; the
    checkpoint's numpy tensors are released as they are copied.
    """
    cfg = config_from_hf(checkpoint.arch, checkpoint.config, dtype=dtype, attn_backend=attn_backend)
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    assign_weights(model, checkpoint.tensors, source=str(checkpoint.source))
    return model


BF16_FROM_PARAMS = 2_000_000_000
"""Models with at least this many parameters load in bfloat16 unless ``dtype`` says otherwise."""


def count_params(cfg) -> int:
    """Parameters of the model ``cfg`` describes (from abstract shapes; nothing allocated)."""
    import numpy as np

    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def build_sharded_model(checkpoint, mesh, rules=None, *, dtype: str | None = None,
                        attn_backend: str = "auto") -> DecoderLM:
    """A :class:`DecoderLM` whose parameters are created on ``mesh``'s devices, each device
    reading only its own slice of ``checkpoint``'s tensors (lazy handles from
    :func:`common.weights.open_checkpoint`, or numpy arrays).

    Each parameter's sharding is the one the training path gives it:
    ``logical_to_spec(variable's logical names, rules, mesh, shape)``. ``dtype`` (``float32``
    or ``bfloat16``) is the compute dtype and the parameters' dtype; default ``bfloat16`` from
    :data:`BF16_FROM_PARAMS` parameters, else ``float32``. The model remembers ``rules``
    (``model.sharding_rules``) so that captures and sweeps place their results by them.
    """
    from jax.sharding import NamedSharding

    from common.sharding.rules import as_rules, logical_names_of, logical_to_spec

    rules = as_rules(rules)
    cfg = config_from_hf(checkpoint.arch, checkpoint.config, dtype="float32",
                         attn_backend=attn_backend)
    if dtype is None:
        dtype = "bfloat16" if count_params(cfg) >= BF16_FROM_PARAMS else "float32"
    cfg = dataclasses.replace(cfg, dtype=dtype)
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))

    def sharding_for(var):
        return NamedSharding(mesh, logical_to_spec(logical_names_of(var), rules, mesh, var.shape))

    assign_sharded(model, checkpoint.tensors, sharding_for, source=str(checkpoint.source),
                   dtype=jnp.dtype(dtype))
    model.sharding_rules = rules
    return model


def resolve_mesh(mesh):
    """A ``jax.sharding.Mesh`` from a mesh or a spec string (``"fsdp=4,tensor=4"``, as
    ``--mesh`` and the projects' ``mesh`` config field take; ``jax.distributed`` is initialised
    first where the environment asks for it); None or ``""``: None (one device)."""
    if mesh is None or (isinstance(mesh, str) and not mesh.strip()):
        return None
    if isinstance(mesh, str):
        from common.sharding.distributed import maybe_initialize
        from common.sharding.mesh import make_mesh

        maybe_initialize()
        return make_mesh(mesh)
    return mesh


def shard_model(model: DecoderLM, mesh, rules=None) -> DecoderLM:
    """``model`` (loaded or built on one device) with its parameters placed on ``mesh`` by
    ``rules`` (default: the training path's), as :func:`load_pretrained` with ``mesh=`` places
    them; a copy, ``model`` is left as it was. ``mesh`` may be a spec string."""
    from jax.sharding import NamedSharding

    from common.sharding.rules import as_rules, logical_names_of, logical_to_spec

    mesh = resolve_mesh(mesh)
    rules = as_rules(rules)
    graphdef, state = nnx.split(model)
    shardings = jax.tree.map(
        lambda v: NamedSharding(mesh, logical_to_spec(logical_names_of(v), rules, mesh, v.shape)),
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    placed = jax.tree.map(lambda v, sh: v.replace(jax.device_put(v[...], sh)), state, shardings,
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    out = nnx.merge(graphdef, placed)
    out.sharding_rules = rules
    return out


def load_pretrained(
    name_or_path: str | os.PathLike = "smollm2-135m-instruct",
    *,
    dtype: str | None = None,
    attn_backend: str = "auto",
    require_tokenizer: bool = True,
    mesh=None,
    rules=None,
):
    """Load a pretrained decoder LM and its tokenizer, offline.

    Args:
      name_or_path: ``"smollm2-135m-instruct"`` (fetched once into the cache by
        ``python -m tools.fetch_model``), a path to a ``.gguf`` file, or a Hugging Face folder
        (``config.json`` + ``*.safetensors`` + ``tokenizer.json``).
      dtype: ``float32`` or ``bfloat16`` compute (default: ``float32``; with a mesh,
        ``bfloat16`` parameters and compute from :data:`BF16_FROM_PARAMS` parameters up).
      attn_backend: attention backend for every layer.
      mesh: a ``jax.sharding.Mesh`` (:func:`common.sharding.make_mesh`) or its spec string
        (``"fsdp=4,tensor=4"``; ``""``/None: one device): the parameters are
        created abstractly and each tensor is read from the file straight onto its devices,
        sliced as ``rules`` shard it (:func:`build_sharded_model`); the whole model is never
        materialised on one device or, for safetensors, in host memory. On several hosts every
        process calls this with the global mesh and reads only its own devices' slices.
      rules: logical-axis rules (default :data:`common.sharding.DEFAULT_RULES`, the training
        path's).

    Loading turns on JAX's persistent compilation cache (``~/.cache/headlab/jax``; opt out
    with ``HEADLAB_COMPILATION_CACHE=0``; see :mod:`common.models.compile_cache`).

    Returns:
      ``(model, tokenizer)``.
    """
    from common import weights

    enable_compilation_cache()

    name = str(name_or_path)
    if name in KNOWN_MODELS:
        path = weights.default_model_path(name)
    else:
        path = pathlib.Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"load_pretrained: {name!r} is neither a known model name {KNOWN_MODELS} nor an "
                "existing .gguf file or Hugging Face folder"
            )
    mesh = resolve_mesh(mesh)
    ckpt = weights.open_checkpoint(path) if mesh is not None else weights.load_checkpoint(path)
    tokenizer = ckpt.tokenizer
    if tokenizer is None and require_tokenizer:
        raise weights.WeightsError(f"{path}: no tokenizer found (expected tokenizer.json or GGUF "
                                   "tokenizer metadata)")
    if mesh is not None:
        model = build_sharded_model(ckpt, mesh, rules, dtype=dtype, attn_backend=attn_backend)
    else:
        model = build_model(ckpt, dtype=dtype or "float32", attn_backend=attn_backend)
    return model, tokenizer

"""Golden PartitionSpec dumps (MaxText's habit): what every parameter's sharding is, as JSON.

``dump(make_model, mesh_shape)`` reads the model abstractly (nothing is allocated) and records,
per parameter, its shape, logical names and PartitionSpec under the rules on an abstract mesh
of the given shape. The dumps are committed under ``tests/common/sharding/golden/`` and diffed
in ``test_golden.py``, so a change of rules, of a model's parameter names or of its logical axes
shows up as a readable diff. A test fixture generator (it builds ``projects/lm``'s model), so it
lives beside the tests. Regenerate after an intended change with::

    python -m tests.common.sharding.golden_dump tests/common/sharding/golden
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from common.sharding.mesh import AXES
from common.sharding.rules import DEFAULT_RULES, Rules, logical_names, param_specs, spec_to_json
from common.train.step import leaf_names

# A v5e-16-like mesh: enough axes > 1 that every rule shows.
GOLDEN_MESH = {"data": 2, "fsdp": 2, "tensor": 4, "context": 1}


def abstract_mesh(shape: dict[str, int]) -> AbstractMesh:
    sizes = tuple(shape.get(a, 1) for a in AXES)
    return AbstractMesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def dump(make_model: Callable[[], nnx.Module], mesh_shape: dict[str, int] = GOLDEN_MESH,
         rules: Rules = DEFAULT_RULES) -> dict:
    """``{"mesh": {...}, "params": {name: {"shape", "logical", "spec"}}}`` for ``make_model()``."""
    _, params, _ = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
    mesh = abstract_mesh(mesh_shape)
    specs = param_specs(params, rules, mesh)
    names = logical_names(params)
    shapes = nnx.to_pure_dict(params)
    flat_names = leaf_names(shapes)
    flat_shapes = [tuple(s.shape) for s in jax.tree.leaves(shapes)]
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_logical = jax.tree.leaves(names, is_leaf=lambda x: x is None or isinstance(x, tuple))
    return {
        "mesh": {a: mesh_shape.get(a, 1) for a in AXES},
        "params": {
            n: {"shape": list(sh), "logical": list(lg) if lg else None, "spec": spec_to_json(sp)}
            for n, sh, lg, sp in zip(flat_names, flat_shapes, flat_logical, flat_specs,
                                     strict=True)
        },
    }


def to_text(d: dict) -> str:
    """JSON with one line per parameter (readable diffs)."""
    lines = [f' "{n}": {json.dumps(v)}' for n, v in d["params"].items()]
    return ('{\n "mesh": ' + json.dumps(d["mesh"]) + ',\n "params": {\n' + ",\n".join(
        " " + ln for ln in lines) + "\n }\n}\n")


def golden_models() -> dict[str, Callable[[], nnx.Module]]:
    """The models with committed dumps."""
    from common.attention import MultiHeadAttention
    from common.models import DecoderLM, ModelConfig
    from projects.lm import train as lm

    c = lm.get_config()
    tiny = ModelConfig(arch="llama", vocab_size=c.model.vocab_size, d_model=c.model.d_model,
                       n_layers=c.model.n_layers, n_heads=c.model.n_heads,
                       n_kv_heads=c.model.n_kv_heads, d_mlp=c.model.d_mlp)
    # SmolLM2-135M's architecture (9 heads, 3 KV heads: neither divides tensor=4).
    smollm2 = ModelConfig(arch="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
                          n_kv_heads=3, d_head=64, d_mlp=1536, tie_embeddings=True,
                          rope_theta=100000.0)
    return {
        "lm_tiny": lambda: DecoderLM(tiny, rngs=nnx.Rngs(0)),
        "smollm2_135m": lambda: DecoderLM(smollm2, rngs=nnx.Rngs(0)),
        # Stand-in for the ICL regression model (projects/icl_regression keeps plain-dict params
        # without logical names): one layer of 8 full-width heads on d + 1 = 6 wide tokens.
        "icl_attention": lambda: MultiHeadAttention(6, 8, 8, 6, rngs=nnx.Rngs(0)),
    }


def main(argv: list[str]) -> None:
    out = pathlib.Path(argv[0] if argv else "tests/common/sharding/golden")
    out.mkdir(parents=True, exist_ok=True)
    for name, make in golden_models().items():
        (out / f"{name}.json").write_text(to_text(dump(make)))
        print(f"wrote {out / name}.json")


if __name__ == "__main__":
    main(sys.argv[1:])

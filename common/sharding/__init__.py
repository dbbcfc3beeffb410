"""Meshes, logical-axis rules and sharded initialisation.

Typical use::

    mesh = make_mesh("data=2,tensor=4")
    init = sharded_init(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)), optax.adamw(1e-3), mesh)
    state = init.create()          # params + optimiser state, each device holding its shard
"""

from common.sharding.mesh import AXES, MeshConfig, MeshError, describe, make_mesh, parse_mesh
from common.sharding.rules import (
    CONTEXT_RULES,
    DEFAULT_RULES,
    activation_placement,
    logical_names,
    logical_to_spec,
    named_shardings,
    opt_state_specs,
    param_specs,
    spec_to_json,
)
from common.sharding.state import ModelDef, ShardedInit, TrainState, sharded_init

__all__ = [
    "AXES",
    "CONTEXT_RULES",
    "DEFAULT_RULES",
    "MeshConfig",
    "MeshError",
    "ModelDef",
    "ShardedInit",
    "TrainState",
    "activation_placement",
    "describe",
    "logical_names",
    "logical_to_spec",
    "make_mesh",
    "named_shardings",
    "opt_state_specs",
    "param_specs",
    "parse_mesh",
    "sharded_init",
    "spec_to_json",
]

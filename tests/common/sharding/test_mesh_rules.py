"""Mesh configs and logical-axis rules (one device; the 8-device checks run in a subprocess)."""

import jax
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from common.attention import MultiHeadAttention
from common.sharding import (
    AXES,
    CONTEXT_RULES,
    logical_to_spec,
    make_mesh,
    opt_state_specs,
    param_specs,
    parse_mesh,
)


def amesh(**shape):
    return AbstractMesh(tuple(shape.get(a, 1) for a in AXES), AXES,
                        axis_types=(AxisType.Auto,) * 4)


def test_parse_mesh_ici_and_dcn():
    c = parse_mesh("data=2,tensor=4")
    assert c.ici == {"data": 2, "tensor": 4} and c.dcn == {}
    assert c.shapes(8) == ((2, 1, 4, 1), (1, 1, 1, 1))
    c = parse_mesh("fsdp=-1,tensor=4;dcn:data=2")
    # 64 chips in 2 slices: 32 per slice = fsdp 8 x tensor 4; data spans the slices.
    assert c.shapes(64) == ((1, 8, 4, 1), (2, 1, 1, 1))
    assert parse_mesh(None).shapes(8) == ((8, 1, 1, 1), (1, 1, 1, 1))


@pytest.mark.parametrize("spec,n,match", [
    ("data=3", 8, "use 3 devices per slice but there are 8"),
    ("data=3,tensor=-1", 8, "do not divide"),
    ("model=2", 8, "unknown mesh axes"),
    ("data=x", 8, "not an int"),
    ("data", 8, "expected axis=degree"),
    ("data=-1,tensor=-1", 8, "at most one axis"),
    ("data=-1;dcn:data=3", 8, "DCN slices"),
])
def test_bad_mesh_specs_name_the_problem(spec, n, match):
    with pytest.raises(ValueError, match=match):
        parse_mesh(spec).shapes(n)


def test_make_mesh_has_explicit_auto_axis_types():
    mesh = make_mesh("data=-1")
    assert mesh.axis_names == AXES
    assert mesh.axis_types == (AxisType.Auto,) * 4
    assert mesh.devices.size == jax.device_count()


def test_logical_rules_follow_the_table():
    m = amesh(data=2, fsdp=2, tensor=4)
    # The batch is split over data and fsdp (ZeRO-3), of which the axes that divide it.
    assert logical_to_spec(("batch", "seq"), mesh=m) == P(("data", "fsdp"))
    assert logical_to_spec(("batch", "seq"), mesh=m, shape=(8, 16)) == P(("data", "fsdp"))
    assert logical_to_spec(("batch", "seq"), mesh=m, shape=(2, 16)) == P("data")
    assert logical_to_spec(("batch", "seq"), mesh=amesh(fsdp=4), shape=(6, 16)) == P("data")
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh=m, shape=(64, 8, 16)) == P(
        "fsdp", "tensor")
    assert logical_to_spec(("heads", "head_dim", "embed"), mesh=m, shape=(8, 16, 64)) == P(
        "tensor", None, "fsdp")
    assert logical_to_spec(("vocab", "embed"), mesh=m, shape=(128, 64)) == P("tensor", "fsdp")
    assert logical_to_spec(("embed", "mlp"), mesh=m, shape=(64, 256)) == P("fsdp", "tensor")
    assert logical_to_spec(None) == P()
    assert logical_to_spec(("batch", "seq"), CONTEXT_RULES) == P(("data", "fsdp"), "context")
    # A population's models axis takes data; its members' batch is split over fsdp only.
    assert logical_to_spec(("models", "batch"), mesh=m, shape=(2, 8)) == P("data", "fsdp")


def test_indivisible_or_repeated_axes_are_replicated():
    m = amesh(tensor=4)
    # 3 KV heads do not split over tensor=4 (SmolLM2): replicated rather than padded.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), mesh=m, shape=(64, 3, 16)) == P(
        "fsdp")
    assert logical_to_spec(("kv_heads", "head_dim"), mesh=m, shape=(4, 16)) == P("tensor")
    # heads and mlp both map to tensor: only the first dimension gets it.
    assert logical_to_spec(("heads", "mlp"), mesh=m, shape=(4, 8)) == P("tensor")


def test_unknown_logical_axis_is_named():
    with pytest.raises(KeyError, match="'experts'"):
        logical_to_spec(("experts", "embed"))
    # The block stack's layer axis has a rule: never split.
    assert logical_to_spec(("layers", "embed", "mlp"), mesh=amesh(fsdp=2, tensor=4),
                           shape=(30, 64, 256)) == P(None, "fsdp", "tensor")


def test_param_and_optimizer_specs_from_metadata():
    mha = nnx.eval_shape(lambda: MultiHeadAttention(16, 4, 2, 8, rngs=nnx.Rngs(0)))
    params = nnx.state(mha, nnx.Param)
    m = amesh(fsdp=2, tensor=2)
    specs = param_specs(params, mesh=m)
    assert specs == {"q_kernel": P("fsdp", "tensor"), "k_kernel": P("fsdp", "tensor"),
                     "v_kernel": P("fsdp", "tensor"), "o_kernel": P("tensor", None, "fsdp")}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt = jax.eval_shape(tx.init, nnx.to_pure_dict(params))
    ospecs = opt_state_specs(opt, specs)
    adam = ospecs[1][0]
    assert adam.mu == specs and adam.nu == specs and adam.count == P()


def test_check_mesh_field_names_the_field():
    from common.configs import ConfigError
    from common.sharding.mesh import check_mesh_field

    check_mesh_field("")
    check_mesh_field("fsdp=4,tensor=2")
    with pytest.raises(ConfigError, match=r"^config\.mesh: mesh spec 'fsdp=x'"):
        check_mesh_field("fsdp=x")
    with pytest.raises(ConfigError, match=r"^model\.mesh: "):
        check_mesh_field("nosuchaxis=2", field="model.mesh")

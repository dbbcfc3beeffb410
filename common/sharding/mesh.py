"""Device meshes from config: four named axes ``data, fsdp, tensor, context``.

A mesh is described by a :class:`MeshConfig`: the per-axis degree inside a slice (ICI, the
fast on-chip interconnect) and across slices (DCN, the data-centre network). On one slice or
on CPU/GPU only the ICI degrees matter and the mesh comes from :func:`jax.make_mesh`; with
several TPU slices the device array comes from ``mesh_utils.create_hybrid_device_mesh`` so
that the DCN degree of each axis spans slices and the ICI degree stays within one.

Axis types are always passed explicitly (``Auto``): the model code contracts over sharded
axes without ``out_sharding`` annotations and lets XLA's partitioner insert the collectives.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor", "context")


class MeshError(ValueError):
    """A mesh spec that is malformed or does not fit the devices; the message says which.

    ``needed`` is the device count the spec asks for when that is what does not fit.
    """

    def __init__(self, message: str, needed: int | None = None):
        super().__init__(message)
        self.needed = needed


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Degrees of the four mesh axes.

    Attributes:
      ici: degree of each axis in :data:`AXES` within a slice, e.g. ``{"data": 2, "tensor": 4}``
        (missing axes have degree 1). One ICI degree may be ``-1``: it takes whatever devices
        are left (``data=-1`` = pure data parallelism over all devices).
      dcn: degree of each axis across slices (multi-slice TPU); empty for one slice.
    """

    ici: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": -1})
    dcn: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, table in (("ici", self.ici), ("dcn", self.dcn)):
            bad = sorted(set(table) - set(AXES))
            if bad:
                raise MeshError(f"MeshConfig.{name}: unknown mesh axes {bad}; known: {AXES}")
            for axis, degree in table.items():
                if not isinstance(degree, int) or (degree < 1 and degree != -1):
                    raise MeshError(
                        f"MeshConfig.{name}[{axis!r}] = {degree!r}: need an int >= 1 or -1")
        if sum(1 for d in self.ici.values() if d == -1) > 1:
            raise MeshError(f"MeshConfig.ici: at most one axis may be -1, got {self.ici}")
        if any(d == -1 for d in self.dcn.values()):
            raise MeshError(f"MeshConfig.dcn: degrees must be explicit, got {self.dcn}")

    def shapes(self, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(ici_shape, dcn_shape)`` over :data:`AXES` for ``num_devices`` devices in all."""
        dcn = tuple(self.dcn.get(a, 1) for a in AXES)
        n_slices = math.prod(dcn)
        if num_devices % n_slices:
            raise MeshError(
                f"{num_devices} devices do not split into {n_slices} DCN slices ({self.dcn})")
        per_slice = num_devices // n_slices
        ici = [self.ici.get(a, 1) for a in AXES]
        fixed = math.prod(d for d in ici if d != -1)
        if -1 in ici:
            if per_slice % fixed:
                raise MeshError(
                    f"ICI degrees {self.ici} do not divide the {per_slice} devices per slice")
            ici[ici.index(-1)] = per_slice // fixed
        if math.prod(ici) != per_slice:
            raise MeshError(
                f"ICI degrees {dict(zip(AXES, ici, strict=True))} use {math.prod(ici)} devices per "
                f"slice but there are {per_slice} ({num_devices} devices / {n_slices} slices)",
                needed=math.prod(ici) * n_slices)
        return tuple(ici), dcn


def check_mesh_field(spec: str | None, field: str = "config.mesh") -> None:
    """Raise :class:`~common.configs.ConfigError` ``"<field>: <what is wrong>"`` unless ``spec``
    parses (a project config's mesh, checked before its run directory exists)."""
    from common.configs import ConfigError

    try:
        parse_mesh(spec)
    except ValueError as e:
        raise ConfigError(f"{field}: {e}") from None


def parse_mesh(spec: str | None) -> MeshConfig:
    """Parse ``"data=2,tensor=4"`` (ICI) or ``"data=2,tensor=4;dcn:data=2"`` into a config.

    ``None`` or ``""`` gives pure data parallelism over all devices.
    """
    if not spec:
        return MeshConfig()
    ici: dict[str, int] = {}
    dcn: dict[str, int] = {}
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        table = ici
        if part.startswith("dcn:"):
            table, part = dcn, part[4:]
        if "=" not in part:
            raise MeshError(f"mesh spec {spec!r}: expected axis=degree, got {part!r}")
        axis, degree = (s.strip() for s in part.split("=", 1))
        try:
            table[axis] = int(degree)
        except ValueError:
            raise MeshError(
                f"mesh spec {spec!r}: degree of {axis!r} is not an int: {degree!r}") from None
    return MeshConfig(ici=ici or {"data": -1}, dcn=dcn)


def make_mesh(config: MeshConfig | str | None = None, devices=None) -> Mesh:
    """Build the ``(data, fsdp, tensor, context)`` mesh for ``devices`` (default: all).

    Single slice: :func:`jax.make_mesh` (it orders devices for the physical topology).
    Multi-slice (any DCN degree > 1): ``create_hybrid_device_mesh``.
    """
    if not isinstance(config, MeshConfig):
        config = parse_mesh(config)
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = config.shapes(len(devices))
    axis_types = (AxisType.Auto,) * len(AXES)
    if math.prod(dcn) > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
        return Mesh(grid, AXES, axis_types=axis_types)
    return jax.make_mesh(ici, AXES, axis_types=axis_types, devices=devices)


def describe(mesh: Mesh) -> str:
    """``"data=2,fsdp=1,tensor=4,context=1 (8 devices, cpu)"``."""
    axes = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
    return f"{axes} ({mesh.devices.size} devices, {mesh.devices.flat[0].platform})"

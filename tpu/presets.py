"""Mesh presets for common TPU slices.

Device counts are chips (one JAX device per chip on v4/v5p megacore and on v5e/v6e). The mesh
is a default to start from: FSDP over the slice with heads over ``tensor`` inside a host's
chips; pure data parallelism (``data=-1``) is often best for models that fit on one chip.

=========  =====  =====  ===========  ===========================
preset     chips  hosts  topology     mesh
=========  =====  =====  ===========  ===========================
v4-8       4      1      2x2x1        fsdp=-1 (all devices)
v5e-16     16     4      4x4          fsdp=4,tensor=4
v5p-64     32     8      2x4x4        fsdp=8,tensor=4
v6e-256    256    64     16x16        data=16,fsdp=16
=========  =====  =====  ===========  ===========================

Multi-slice: append ``;dcn:data=N`` to run N slices as data-parallel replicas over DCN
(e.g. ``"data=16,fsdp=16;dcn:data=2"`` on two v6e-256 slices). Each ICI axis should map onto
whole physical torus axes (``jax.make_mesh`` does not split one physical axis between two mesh
axes): on v6e-256's 16x16 torus ``fsdp=64,tensor=4`` does not map, ``data=16,fsdp=16`` does.
``fsdp=-1`` on v4-8 takes all its chips.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """A TPU slice: ``accelerator_type`` as gcloud names it, its shape and a default mesh."""

    name: str
    accelerator_type: str
    chips: int
    hosts: int
    topology: str  # for jax.experimental.topologies.get_topology_desc("<gen>:<topology>")
    generation: str
    mesh: str

    @property
    def topology_name(self) -> str:
        return f"{self.generation}:{self.topology}"


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("v4-8", "v4-8", 4, 1, "2x2x1", "v4", "fsdp=-1"),
    Preset("v5e-16", "v5litepod-16", 16, 4, "4x4", "v5e", "fsdp=4,tensor=4"),
    Preset("v5p-64", "v5p-64", 32, 8, "2x4x4", "v5p", "fsdp=8,tensor=4"),
    Preset("v6e-256", "v6e-256", 256, 64, "16x16", "v6e", "data=16,fsdp=16"),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown TPU preset {name!r}; known: {sorted(PRESETS)}") from None

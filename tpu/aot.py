"""Compile the training step ahead of time for a TPU slice, without the TPU.

    PYTHONPATH=/path/with/libtpu python -m tpu.aot lm --preset v5e-16 [--set k=v ...]

``jax.experimental.topologies`` describes the slice's devices from libtpu alone; the step is
lowered with the preset's mesh and compiled by the TPU compiler, which reports the per-device
memory the program needs, so a sharding that does not fit is caught before the pod is booked.
Without libtpu, :func:`aot_compile` raises :class:`LibtpuUnavailable` (the test skips).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np

from common.configs import ConfigError


class LibtpuUnavailable(RuntimeError):
    """libtpu is not importable here: TPU topologies cannot be described."""


def topology_devices(topology_name: str, num_slices: int = 1):
    """The devices of ``num_slices`` TPU slices, e.g. ``"v5e:4x4"`` (needs libtpu, not a TPU)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise LibtpuUnavailable("libtpu is not installed (pip install 'jax[tpu]')") from None
    from jax.experimental import topologies

    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    devices = topologies.get_topology_desc(topology_name, "tpu", num_slices=num_slices).devices
    # v4/v5p descriptions list both TensorCores of a chip; JAX runs one device per chip there
    # (megacore), so keep the first core of each chip.
    return [d for d in devices if getattr(d, "core_on_chip", 0) == 0]


def aot_compile(target: str = "lm", preset: str = "v5e-16", overrides: list[str] = (),
                mesh: str | None = None, slices: int = 1) -> dict:
    """Lower and compile ``target``'s train step for ``preset``; returns sizes and memory.

    ``slices > 1`` compiles for that many slices joined over DCN; the default mesh then runs
    them as data-parallel replicas (``<preset mesh>;dcn:data=<slices>``).
    """
    from common.configs import apply_overrides
    from common.sharding import make_mesh, sharded_init
    from common.sharding.rules import logical_to_spec
    from common.train.cli import target_module
    from common.train.step import make_train_step
    from tpu.presets import get_preset

    p = get_preset(preset)
    devices = topology_devices(p.topology_name, slices)
    mesh_obj = make_mesh(mesh or (p.mesh if slices == 1 else f"{p.mesh};dcn:data={slices}"),
                         devices=devices)
    module = target_module(target)
    config = apply_overrides(module.get_config(None), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        task, tx, dataset, train_config, _ = module.build(config, tmp)
        example = dataset[0]  # one process here: the local batch is the global batch
    init = sharded_init(task.make_model, tx, mesh_obj)
    batch_sh = {k: jax.sharding.NamedSharding(mesh_obj, logical_to_spec(v, mesh=mesh_obj))
                for k, v in task.batch_axes.items()}
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=batch_sh[k])
             for k, v in example.items()}
    step = jax.jit(make_train_step(init.model_def, task.loss_fn, tx,
                                   grad_accum=train_config.grad_accum),
                   in_shardings=(init.shardings, batch_sh),
                   out_shardings=(init.shardings, None, None), donate_argnums=0)
    compiled = step.lower(init.abstract, batch).compile()
    mem = compiled.memory_analysis()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(init.abstract.params))
    out = {"preset": preset, "topology": p.topology_name, "slices": slices,
           "devices": len(devices),
           "mesh": dict(mesh_obj.shape), "params": n_params, "platform": devices[0].platform}
    if mem is not None:
        for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                      "generated_code_size_in_bytes"):
            if hasattr(mem, field):
                out[field] = int(getattr(mem, field))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tpu.aot", description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default="lm")
    ap.add_argument("--preset", default="v5e-16")
    ap.add_argument("--mesh", default=None, help="override the preset's mesh")
    ap.add_argument("--slices", type=int, default=1, help="slices joined over DCN")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    try:
        print(json.dumps(aot_compile(a.target, a.preset, a.overrides, a.mesh, a.slices)))
    except ConfigError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")


if __name__ == "__main__":
    main()

"""Compile the training step ahead of time for a TPU slice, without the TPU.

    PYTHONPATH=/path/with/libtpu python -m tpu.aot lm --preset v5e-16 [--set k=v ...]
    PYTHONPATH=... python -m tpu.aot lm --preset v5p-64 --shape llama3-8b --layers 1,2,4,8,32 \
        --remat none,full

``jax.experimental.topologies`` describes the slice's devices from libtpu alone; the step is
lowered with the preset's mesh and compiled by the TPU compiler, which reports the per-device
memory the program needs, so a sharding that does not fit is caught before the pod is booked.
Without libtpu, :func:`aot_compile` raises :class:`LibtpuUnavailable` (the test skips).

``--shape`` sets the ``lm`` target's model to a published shape (:data:`MODEL_SHAPES`:
Llama-3-8B and -70B, bf16, sequences of 4096, global batch 256, Pallas attention), ``--layers``
and ``--remat`` sweep its depth and rematerialisation policy; each result line carries the
compile time on this machine and the per-device memory against the chip's HBM. A program that
does not fit is reported (``fits: false`` with the memory the compiler asked for), not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

from common.configs import ConfigError

_SHAPE_DATA = ["model.dtype=bfloat16", "model.attn_backend=pallas", "data.seq_len=4096",
               "data.global_batch_size=256", "data.num_examples=256"]
MODEL_SHAPES: dict[str, list[str]] = {
    "llama3-8b": ["model.vocab_size=128256", "model.d_model=4096", "model.n_heads=32",
                  "model.n_kv_heads=8", "model.d_mlp=14336", "model.n_layers=32", *_SHAPE_DATA],
    "llama3-70b": ["model.vocab_size=128256", "model.d_model=8192", "model.n_heads=64",
                   "model.n_kv_heads=8", "model.d_mlp=28672", "model.n_layers=80", *_SHAPE_DATA],
}
"""``--set`` overrides of the ``lm`` target for published model shapes."""

HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.74, "v6e": 32.0}
"""HBM per chip (GiB) by TPU generation, as the compiler reports it."""

_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM "
                  r"\(([\d.]+)G\)")


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
    from common.sharding import activation_placement, make_mesh, sharded_init
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
    batch_sh = {k: jax.sharding.NamedSharding(mesh_obj, logical_to_spec(
        v, mesh=mesh_obj, shape=np.shape(example[k]))) for k, v in task.batch_axes.items()}
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=batch_sh[k])
             for k, v in example.items()}
    step = jax.jit(make_train_step(init.model_def, task.loss_fn, tx,
                                   grad_accum=train_config.grad_accum,
                                   placement=activation_placement(mesh_obj)),
                   in_shardings=(init.shardings, batch_sh),
                   out_shardings=(init.shardings, None, None), donate_argnums=0)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(init.abstract.params))
    hbm = HBM_GIB.get(p.generation)
    out = {"preset": preset, "topology": p.topology_name, "slices": slices,
           "devices": len(devices),
           "mesh": dict(mesh_obj.shape), "params": n_params, "platform": devices[0].platform,
           "n_layers": int(config.model.n_layers) if "model" in config else None,
           "remat": str(config.model.get("remat", "none")) if "model" in config else None,
           "hbm_gib": hbm}
    t0 = time.perf_counter()
    try:
        compiled = step.lower(init.abstract, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or m is None:
            raise
        out.update(fits=False, compile_s=round(time.perf_counter() - t0, 1),
                   required_temp_gib=float(m.group(1)), hbm_gib=float(m.group(2)))
        return out
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    mem = compiled.memory_analysis()
    if mem is not None:
        for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                      "temp_size_in_bytes", "generated_code_size_in_bytes"):
            if hasattr(mem, field):
                out[field] = int(getattr(mem, field))
        total = (out.get("argument_size_in_bytes", 0) + out.get("output_size_in_bytes", 0)
                 - out.get("alias_size_in_bytes", 0) + out.get("temp_size_in_bytes", 0))
        out["per_device_gib"] = round(total / 2**30, 2)
        if hbm is not None:
            out["fits"] = out["per_device_gib"] <= hbm
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tpu.aot", description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default="lm")
    ap.add_argument("--preset", default="v5e-16")
    ap.add_argument("--mesh", default=None, help="override the preset's mesh")
    ap.add_argument("--slices", type=int, default=1, help="slices joined over DCN")
    ap.add_argument("--shape", choices=sorted(MODEL_SHAPES), default=None,
                    help="a published model shape for the lm target (default: the target's own)")
    ap.add_argument("--layers", default=None,
                    help="comma-separated layer counts to compile in turn (e.g. 1,2,4,8,32)")
    ap.add_argument("--remat", default=None,
                    help="comma-separated remat policies to compile in turn (e.g. none,full)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    base = (MODEL_SHAPES[a.shape] if a.shape else []) + list(a.overrides)
    layers = [None] if a.layers is None else [int(x) for x in a.layers.split(",")]
    remats = [None] if a.remat is None else a.remat.split(",")
    results = []
    try:
        for n in layers:
            for r in remats:
                extra = ([] if n is None else [f"model.n_layers={n}"]) + (
                    [] if r is None else [f"model.remat={r}"])
                res = aot_compile(a.target, a.preset, base + extra, a.mesh, a.slices)
                results.append(res)
                print(json.dumps(res), flush=True)
    except ConfigError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    if len(results) > 1 or a.shape:
        print(f"{'layers':>6} {'remat':>6} {'compile s':>9} {'GiB/device':>10} fits "
              f"({a.preset}, HBM {results[0].get('hbm_gib')} GiB)", file=sys.stderr)
        for r in results:
            gib = r.get("per_device_gib", f">{r.get('required_temp_gib')}")
            print(f"{r.get('n_layers')!s:>6} {r.get('remat')!s:>6} {r['compile_s']:>9} "
                  f"{gib!s:>10} {r.get('fits')}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Compile the sharded forward with captures ahead of time for a TPU slice, without the TPU.

    PYTHONPATH=/path/with/libtpu python -m tpu.aot_forward llama3-8b --preset v5e-16 \
        --batch 8 --seq 2048 --sites z
    PYTHONPATH=... python -m tpu.aot_forward llama2-70b --preset v5p-64 --sites z,resid_post

The model (a name of :data:`common.models.memory.NAMED_CONFIGS` or a Hugging Face
``config.json``) is built abstractly in bfloat16, its parameters placed on the preset's mesh by
the loader's rules, and ``run_with_cache``'s jitted program (the one a sharded
``load_pretrained`` model runs, captures split on batch and heads) is lowered and compiled by
the TPU compiler for the slice's topology. Before compiling, our own estimate
(:func:`common.models.memory.plan_memory`) is checked against the chip's HBM and a
configuration that cannot fit is refused (:class:`DoesNotFit`); after compiling, the compiler's
per-device memory is reported beside the estimate (and refused too when over HBM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from common.configs import ConfigError


class DoesNotFit(ConfigError):
    """The forward needs more memory per device than the chip has."""


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def aot_forward(model: str = "llama3-8b", preset: str = "v5e-16", *, batch: int = 8,
                seq: int = 2048, sites: tuple[str, ...] = ("z",), layers=None,
                mesh: str | None = None, attn_backend: str = "xla", last_only: bool = True,
                check_estimate: bool = True, compile: bool = True) -> dict:
    """Lower and compile the sharded capture forward of ``model`` for ``preset``.

    Returns a dict: the mesh, the parameter count, our per-device estimate (params, captures,
    logits, total) and the compiler's (argument, output, temporaries, total), HBM and ``fits``.
    With ``compile=False`` only the estimate (no libtpu needed).

    Raises:
      DoesNotFit: our estimate (before compiling) or the compiler's total exceeds the HBM.
      tpu.aot.LibtpuUnavailable: libtpu cannot be imported here.
    """
    from common.models.capture import _capture_jit, resolve_layers, resolve_sites
    from common.models.decoder import DecoderLM
    from common.models.memory import hf_model_config, plan_memory
    from common.sharding import AXES, make_mesh, parse_mesh
    from common.sharding.rules import DEFAULT_RULES, MeshPlacement, logical_names_of
    from tpu.aot import _OOM, HBM_GIB, topology_devices
    from tpu.presets import get_preset

    p = get_preset(preset)
    cfg = hf_model_config(model, dtype="bfloat16", attn_backend=attn_backend)
    ici, _ = parse_mesh(mesh or p.mesh).shapes(p.chips)  # the mesh, before any device
    mesh_shape = dict(zip(AXES, ici, strict=True))
    sites = resolve_sites(sites)
    layers = resolve_layers(layers, cfg.n_layers)
    plan = plan_memory(cfg, mesh_shape, batch=batch, seq=seq, sites=sites, layers=layers,
                       last_only=last_only)
    hbm = HBM_GIB.get(p.generation)
    out = {"model": model, "preset": preset, "topology": p.topology_name,
           "devices": p.chips, "mesh": mesh_shape, "params": plan.n_params,
           "batch": batch, "seq": seq, "sites": list(sites), "layers": len(layers),
           "hbm_gib": hbm,
           "estimate_gib": {"params": _gib(plan.params), "captures": _gib(plan.captures),
                            "logits": _gib(plan.logits), "total": _gib(plan.per_device_bytes)}}
    if check_estimate and hbm is not None and not plan.fits(hbm * 2**30):
        raise DoesNotFit(f"{model} on {preset} (mesh {out['mesh']}): our estimate is "
                         f"{_gib(plan.per_device_bytes)} GiB per device before temporaries, over "
                         f"the {hbm} GiB of HBM ({plan.describe()}); use a larger slice, more "
                         "fsdp/tensor, a smaller batch or fewer captured sites/layers")
    if not compile:
        return out
    devices = topology_devices(p.topology_name)
    mesh_obj = make_mesh(mesh or p.mesh, devices=devices)
    placement = MeshPlacement(mesh_obj, DEFAULT_RULES)
    abstract = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    def placed(var):
        names = logical_names_of(var)
        return jax.ShapeDtypeStruct(var.shape, jnp.bfloat16,
                                    sharding=placement(names, tuple(var.shape)))

    state = jax.tree.map(placed, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32,
                               sharding=placement(("batch", "seq"), (batch, seq)))
    t0 = time.perf_counter()
    lowered = _capture_jit.lower(graphdef, state, ids, None, None, None, sites=sites,
                                 layers=layers, last_only=last_only, placement=placement)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or m is None:
            raise
        raise DoesNotFit(f"{model} on {preset}: the TPU compiler needs {m.group(1)} GiB of "
                         f"temporaries, over the {m.group(2)} GiB of HBM") from None
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    mem = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    got = {f: int(getattr(mem, f)) for f in fields if mem is not None and hasattr(mem, f)}
    total = (got.get("argument_size_in_bytes", 0) + got.get("output_size_in_bytes", 0)
             - got.get("alias_size_in_bytes", 0) + got.get("temp_size_in_bytes", 0))
    out["compiler_gib"] = {"arguments": _gib(got.get("argument_size_in_bytes", 0)),
                           "outputs": _gib(got.get("output_size_in_bytes", 0)),
                           "temporaries": _gib(got.get("temp_size_in_bytes", 0)),
                           "total": _gib(total)}
    out["fits"] = hbm is None or total <= hbm * 2**30
    if not out["fits"]:
        raise DoesNotFit(f"{model} on {preset}: the compiled forward needs {_gib(total)} GiB "
                         f"per device, over the {hbm} GiB of HBM ({json.dumps(out)})")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tpu.aot_forward",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="llama3-8b",
                    help="a named config (llama3-8b, llama2-70b, qwen2-7b) or a config.json")
    ap.add_argument("--preset", default="v5e-16")
    ap.add_argument("--mesh", default=None, help="override the preset's mesh")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--sites", default="z", help="comma-separated captured sites")
    ap.add_argument("--attn-backend", default="xla")
    ap.add_argument("--estimate-only", action="store_true",
                    help="our per-device estimate only (no libtpu, no compile)")
    a = ap.parse_args(argv)
    sites = tuple(s for s in a.sites.split(",") if s)
    try:
        res = aot_forward(a.model, a.preset, batch=a.batch, seq=a.seq, sites=sites, mesh=a.mesh,
                          attn_backend=a.attn_backend, compile=not a.estimate_only)
    except (ConfigError, ValueError, KeyError) as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    print(json.dumps(res), flush=True)
    if a.estimate_only:
        est = res["estimate_gib"]
        print(f"{a.model} on {a.preset} {res['mesh']}: per device, our estimate {est['total']} "
              f"GiB (params {est['params']}, captures {est['captures']}, logits "
              f"{est['logits']}); HBM {res['hbm_gib']} GiB", file=sys.stderr)
        return
    est, comp = res["estimate_gib"], res["compiler_gib"]
    print(f"{a.model} on {a.preset} {res['mesh']}: per device, our estimate {est['total']} GiB "
          f"(params {est['params']}, captures {est['captures']}) vs the compiler's "
          f"{comp['total']} GiB (arguments {comp['arguments']}, outputs {comp['outputs']}, "
          f"temporaries {comp['temporaries']}); HBM {res['hbm_gib']} GiB; compiled in "
          f"{res['compile_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Benchmark the attention backends: forward and forward+backward TFLOP/s.

FLOPs (the convention of the JAX Pallas attention benchmarks): forward ``4·B·H·Sq·Skv·D``
(two matmuls, 2 FLOPs per multiply-add), halved for causal; backward ``2.5x`` the forward, so
forward+backward counts ``3.5x``. Ratios are against ``xla`` (``jax.nn.dot_product_attention(
implementation="xla")``) and, on GPU, ``cudnn``, measured in the same run. Peak is the
platform's dense bf16 number (table below), ``n/a`` where unknown (CPU).

    python -m tools.bench_attention --quick          # tiny shapes; runs anywhere (CPU: interpret)
    python -m tools.bench_attention                  # seq 1k-16k, head_dim 64/128, bf16, causal
    python -m tools.bench_attention --device-check   # on an accelerator: tests + benchmark + memory

``--device-check`` is the one prepared script for a machine with an accelerator: it runs the
Pallas kernel test directory (interpret mode, forced onto the host CPU), then, compiled on the
device, a correctness check of each backend against an f32 einsum at seq 1024, the benchmark
(seq 1k-16k; the issue's target row is seq 4096, head_dim 128, bf16, causal: pallas ≥ 60% of
cuDNN and ≥ 2x xla) and the temporary memory of forward+backward at two lengths (linear in
sequence length for flash kernels, quadratic for a materialised pattern). Backends that cannot
serve a call on the platform are reported as ``unsupported: reason``. On CPU the numbers are
interpret-mode numbers: they check that the tool runs, not speed. Timings on a shared machine
are noisy; each is the median of ``--iters`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from common.attention.backends import BackendUnsupported
from common.attention.core import dot_product_attention
from common.attention.masks import Mask

# Dense bf16 peak TFLOP/s per chip, by substring of ``device_kind`` (lower case).
PEAK_TFLOPS = {
    "h200": 989.0,
    "h100": 989.0,
    "a100": 312.0,
    "l4": 121.0,
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,
    "tpu v6": 918.0,
}


def peak_tflops(device) -> float | None:
    kind = device.device_kind.lower()
    for key, val in PEAK_TFLOPS.items():
        if key in kind:
            return val
    return None


def attention_flops(b: int, h: int, sq: int, skv: int, d: int, causal: bool) -> float:
    """Forward FLOPs ``4·B·H·Sq·Skv·D``, halved for causal."""
    f = 4.0 * b * h * sq * skv * d
    return f / 2 if causal else f


def _time(fn, args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _make(backend: str, causal: bool):
    mask = Mask(causal=True) if causal else None

    def fwd(q, k, v):
        return dot_product_attention(q, k, v, mask=mask, backend=backend).out

    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(fwd, q, k, v)
        return vjp(out)  # cotangent = out: no extra input, same cost

    return jax.jit(fwd), jax.jit(fwd_bwd)


def _inputs(b, s, h, kvh, d, dtype):
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (b, s, h, d), dtype)
    k = jax.random.normal(ks[1], (b, s, kvh, d), dtype)
    v = jax.random.normal(ks[2], (b, s, kvh, d), dtype)
    return q, k, v


def backends_for(platform: str) -> list[str]:
    """The backends worth timing on ``platform``: ``pallas``, ``xla``, and what ``auto`` adds
    there (``cudnn`` on GPU, the ``cpu`` einsums on CPU)."""
    extra = {"gpu": ["cudnn"], "cpu": ["cpu"]}.get(platform, [])
    return ["pallas", "xla"] + extra


def bench_row(b, s, h, kvh, d, causal, dtype, iters, backends) -> dict:
    """One shape: per backend fwd / fwd+bwd seconds and TFLOP/s (or the reason it can't run)."""
    q, k, v = _inputs(b, s, h, kvh, d, dtype)
    flops = attention_flops(b, h, s, s, d, causal)
    row = {"batch": b, "seq": s, "heads": h, "kv_heads": kvh, "head_dim": d, "causal": causal,
           "dtype": jnp.dtype(dtype).name}
    for name in backends:
        fwd, fwd_bwd = _make(name, causal)
        try:
            t_f = _time(fwd, (q, k, v), iters)
            t_fb = _time(fwd_bwd, (q, k, v), iters)
        except BackendUnsupported as e:
            row[name] = {"unsupported": str(e)}
            continue
        except Exception as e:  # a lowering failure is a result too  # noqa: BLE001
            row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        row[name] = {"fwd_s": t_f, "fwd_bwd_s": t_fb, "fwd_tflops": flops / t_f / 1e12,
                     "fwd_bwd_tflops": 3.5 * flops / t_fb / 1e12}
    return row


def print_row(row: dict, peak: float | None) -> None:
    head = (f"B={row['batch']} S={row['seq']:>5} H={row['heads']}/{row['kv_heads']} "
            f"D={row['head_dim']:>3} {'causal' if row['causal'] else 'full  '} {row['dtype']}")
    print(head)
    base = {}
    for name in ("xla", "cudnn"):
        if "fwd_s" in row.get(name, {}):
            base[name] = row[name]
    for name, r in row.items():
        if not isinstance(r, dict):
            continue
        if "fwd_s" not in r:
            print(f"  {name:>7}: {r}")
            continue
        pct = "" if peak is None else (
            f"  ({100 * r['fwd_tflops'] / peak:5.1f}% / {100 * r['fwd_bwd_tflops'] / peak:5.1f}%"
            " of peak)")
        ratios = "".join(
            f"  vs {bn}: fwd {bv['fwd_s'] / r['fwd_s']:.2f}x, fwd+bwd "
            f"{bv['fwd_bwd_s'] / r['fwd_bwd_s']:.2f}x"
            for bn, bv in base.items() if bn != name)
        print(f"  {name:>7}: fwd {r['fwd_tflops']:8.3f} TFLOP/s  fwd+bwd "
              f"{r['fwd_bwd_tflops']:8.3f} TFLOP/s{pct}{ratios}")


def memory_scaling(backend: str, lengths=(2048, 8192), h=8, d=128, dtype=jnp.bfloat16) -> dict:
    """Temporary bytes of a compiled forward+backward at two lengths (linear vs quadratic)."""
    out = {}
    for s in lengths:
        q, k, v = _inputs(1, s, h, h, d, dtype)
        _, fwd_bwd = _make(backend, True)
        try:
            mem = fwd_bwd.lower(q, k, v).compile().memory_analysis()
        except BackendUnsupported as e:
            return {"unsupported": str(e)}
        except Exception as e:  # noqa: BLE001
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        out[s] = None if mem is None else int(mem.temp_size_in_bytes)
    return out


def correctness(backends, s=1024, h=8, kvh=2, d=128) -> dict:
    """Max |backend - f32 einsum| at one shape (bf16 inputs, causal)."""
    q, k, v = _inputs(1, s, h, kvh, d, jnp.bfloat16)
    ref = dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                mask=Mask(causal=True), backend="reference").out
    res = {}
    for name in backends:
        try:
            got = jax.jit(_make(name, True)[0])(q, k, v)
            res[name] = float(jnp.abs(got.astype(jnp.float32) - ref).max())
        except BackendUnsupported as e:
            res[name] = f"unsupported: {e}"
        except Exception as e:  # noqa: BLE001
            res[name] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return res


def run_tests() -> int:
    """The Pallas kernel tests (interpret mode), forced onto the host CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "pytest", "tests/common/attention/pallas", "-q", "-m", ""]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU)")
    p.add_argument("--device-check", action="store_true",
                   help="tests + correctness + benchmark + memory, for an accelerator machine")
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--no-causal", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    dev = jax.devices()[0]
    platform = dev.platform
    peak = peak_tflops(dev)
    print(f"device: {dev.device_kind} ({platform}), peak bf16 "
          f"{'n/a' if peak is None else f'{peak:.0f} TFLOP/s'}; jax {jax.__version__}")
    if platform == "cpu":
        print("note: CPU runs the Pallas kernels in interpret mode: numbers check the tool, "
              "not speed")
    rc = 0
    if a.device_check:
        # The Mosaic GPU kernel is opt-in until it has run on hardware: this run is that check.
        from common.attention.pallas.api import GPU_OPT_IN

        os.environ.setdefault(GPU_OPT_IN, "1")
        rc = run_tests()
        print("correctness (max abs err vs f32 einsum, seq 1024, bf16):",
              correctness(backends_for(platform)), flush=True)
    if a.quick:
        shapes = [(1, s, 2, 1, d) for s in (128, 256) for d in (64,)]
        iters = 1
    else:
        seqs = [int(x) for x in a.seqs.split(",")]
        dims = [int(x) for x in a.head_dims.split(",")]
        shapes = [(a.batch, s, a.heads, a.kv_heads, d) for d in dims for s in seqs]
        iters = a.iters
    rows = []
    for b, s, h, kvh, d in shapes:
        row = bench_row(b, s, h, kvh, d, not a.no_causal, jnp.bfloat16, iters,
                        backends_for(platform))
        print_row(row, peak)
        rows.append(row)
        sys.stdout.flush()
    if a.device_check:
        for name in backends_for(platform):
            mem = memory_scaling(name)
            vals = [x for x in mem.values() if isinstance(x, int)]
            growth = f" (x{vals[1] / vals[0]:.1f} for 4x length)" if len(vals) == 2 and vals[0] \
                else ""
            print(f"memory (temp bytes, fwd+bwd) {name}: {mem}{growth}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rc


if __name__ == "__main__":
    from common.xla_flags import enable_xnn

    enable_xnn()  # XNNPACK fusion on CPU, before JAX starts (see common/xla_flags.py)
    raise SystemExit(main())

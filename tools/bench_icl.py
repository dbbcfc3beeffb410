"""Benchmark icl_regression training: ours vs PyTorch eager, and vmapped seeds vs sequential runs.

    python -m tools.bench_icl [--heads 4] [--steps 300] [--seeds 8]

Same model (one layer, H full-width softmax heads, d = 5, L = 40), same batch (256 fresh
prompts drawn every step), same optimiser (Adam 1e-3), all on CPU in this process. Prints
steps/s and the ratios (targets: ours ≥ 2× PyTorch eager; vmapped seeds ≥ 4× sequential).
Timings exclude compilation unless stated; on a shared CPU they are noisy. With several cores
the seeds are also spread over one host device per core (the population's ``models`` axis on
the ``data`` mesh axis, as ``train.train`` lays it out on a multi-device machine), measured in a
fresh process. Ours is the shared loop (:func:`common.train.train`, ``steps`` steps per compiled
call, checkpoints off), per-model metrics rows and pattern probe included.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import optax

from common.sharding import make_mesh
from common.train import Task, TrainConfig
from common.train import train as train_loop
from projects.icl_regression import spec, train
from projects.icl_regression.configs.default import get_config


def _config(steps: int, seeds: tuple[int, ...]):
    c = get_config("quick")
    c.lr = 1e-3
    c.steps, c.log_every, c.ckpt_every = steps, steps, steps
    c.seeds = seeds
    c.noniso.enabled = c.multitask.enabled = c.linear.enabled = c.activation.enabled = False
    return c


def jax_steps_per_s(heads: int, steps: int, seeds: tuple[int, ...]) -> tuple[float, float]:
    """``(steps/s of the whole bucket, compile seconds)`` for one bucket of ``len(seeds)`` models.

    Two calls of ``steps`` steps through the shared loop, the models spread over the process's
    devices as ``train.train`` does; the first call includes compilation.
    """
    c = _config(steps, seeds)
    c.heads = (heads,)
    pop, device_data = train.population(spec.buckets(c), c)
    tc = TrainConfig(steps=2 * steps, log_every=steps, checkpoint_every=0, steps_per_call=steps,
                     progress=False)
    with tempfile.TemporaryDirectory() as workdir:
        first, dt = train_loop(Task.for_population(pop, device_data), optax.adam(c.lr), None, tc,
                               make_mesh(), workdir).step_times
    return steps / dt, max(first - dt, 0.0)


def torch_steps_per_s(heads: int, steps: int, d: int = 5, length: int = 40,
                      batch: int = 256, threads: int | None = None) -> float:
    """PyTorch eager, transcribing the official ``MultiHeadAttention`` (stacked nn.Linear)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    width = d + 1

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(width, width * heads, bias=False)
            self.k = torch.nn.Linear(width, width * heads, bias=False)
            self.v = torch.nn.Linear(width, width * heads, bias=False)
            self.o = torch.nn.Linear(width * heads, 1, bias=False)

        def forward(self, ctx, query):  # ctx [b, L, D], query [b, D]
            b = ctx.shape[0]
            q = self.q(query).view(b, heads, 1, width)
            k = self.k(ctx).view(b, length, heads, width).transpose(1, 2)
            v = self.v(ctx).view(b, length, heads, width).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width), dim=-1)
            return self.o((p @ v).reshape(b, heads * width))[:, 0]

    m = Model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)

    def step():
        x = torch.randn(batch, length, d)
        xq = torch.randn(batch, d)
        beta = torch.randn(batch, d) / math.sqrt(d)
        y = (x @ beta[:, :, None])[..., 0] + math.sqrt(0.1) * torch.randn(batch, length)
        yq = (xq * beta).sum(-1) + math.sqrt(0.1) * torch.randn(batch)
        ctx = torch.cat([x, y[..., None]], -1)
        query = torch.cat([xq, torch.zeros(batch, 1)], -1)
        loss = torch.mean((m(ctx, query) - yq) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def sharded_steps_per_s(heads: int, steps: int, seeds: int, devices: int) -> float:
    """Vmapped ``seeds`` models spread over ``devices`` host CPU devices (a fresh process)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench_icl", "--child-sharded", "--heads", str(heads),
         "--steps", str(steps), "--seeds", str(seeds)],
        env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--child-sharded", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_sharded:  # run by sharded_steps_per_s with several host devices
        print(jax_steps_per_s(a.heads, a.steps, tuple(range(a.seeds)))[0])
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; H={a.heads}, d=5, L=40, "
          f"batch 256, Adam; {a.steps} timed steps per measurement")
    ours, comp1 = jax_steps_per_s(a.heads, a.steps, (0,))
    import torch

    default_threads = torch.get_num_threads()
    by_threads = {t: torch_steps_per_s(a.heads, a.steps, threads=t)
                  for t in sorted({1, default_threads})}
    torch.set_num_threads(default_threads)
    best = max(by_threads, key=by_threads.get)
    torch_sps = by_threads[best]
    print(f"ours (jit+scan)      {ours:8.1f} steps/s  (compile {comp1:.1f} s)")
    for t, v in by_threads.items():
        print(f"pytorch eager        {v:8.1f} steps/s  ({t} thread{'s' if t > 1 else ''})")
    print(f"ratio ours / pytorch {ours / torch_sps:8.2f}x   (target >= 2x; vs the faster "
          f"PyTorch setting, {best} thread{'s' if best > 1 else ''})")
    vm, comp_vm = jax_steps_per_s(a.heads, a.steps, tuple(range(a.seeds)))
    seq_times, seq_compile = [], []
    for s in range(a.seeds):
        sps, comp = jax_steps_per_s(a.heads, a.steps, (s,))
        seq_times.append(a.steps / sps)
        seq_compile.append(comp)
    seq_run = sum(seq_times)
    vm_run = a.steps / vm
    print(f"vmapped {a.seeds} seeds       {vm * a.seeds:8.1f} model-steps/s (compile {comp_vm:.1f} s)")
    print(f"{a.seeds} sequential runs     {a.seeds * a.steps / seq_run:8.1f} model-steps/s "
          f"(compile {sum(seq_compile):.1f} s in all)")
    print(f"ratio vmapped / sequential, steps only      {seq_run / vm_run:6.2f}x   (target >= 4x)")
    total = a.steps * 2  # a run = the two chunks measured above
    seq_wall = sum(seq_compile) + 2 * seq_run
    vm_wall = comp_vm + 2 * vm_run
    print(f"ratio vmapped / sequential, wall incl. compile ({total} steps per run) "
          f"{seq_wall / vm_wall:6.2f}x")
    print(f"vmapped ours / pytorch eager (model-steps/s) {vm * a.seeds / torch_sps:6.2f}x")
    cores = os.cpu_count() or 1
    if cores > 1 and a.seeds % cores == 0:
        sh = sharded_steps_per_s(a.heads, a.steps, a.seeds, cores)
        print(f"vmapped {a.seeds} seeds over {cores} host devices (one per core) "
              f"{sh * a.seeds:8.1f} model-steps/s")
        print(f"ratio sharded vmapped / sequential, steps only {seq_run / (a.steps / sh):6.2f}x  "
              f"(target >= 4x)")


if __name__ == "__main__":
    from common.xla_flags import enable_xnn

    enable_xnn()  # XNNPACK fusion on CPU, before JAX starts (see common/xla_flags.py)
    main()

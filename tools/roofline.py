"""This machine's physical limits, measured in-process for the benchmarks' ratios."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock runs of ``fn`` (seconds)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def jax_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of a jitted ``n x n`` matmul: JAX's practical matmul roofline here."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    return 2 * n**3 / best_time(lambda: f(a).block_until_ready(), repeats) / 1e9


def read_bandwidth_gbs(mib: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth (GB/s) of a jitted reduction over ``mib`` MiB of float32."""
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    return x.nbytes / best_time(lambda: f(x).block_until_ready(), repeats) / 1e9


def torch_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The same float32 matmul rate measured through torch (its oneDNN/MKL GEMM)."""
    import torch

    a = torch.as_tensor(np.random.default_rng(0).standard_normal((n, n), np.float32))
    return 2 * n**3 / best_time(lambda: a @ a, repeats) / 1e9


def torch_read_bandwidth_gbs(mib: int = 1024, repeats: int = 5) -> float:
    """The same read bandwidth measured through a torch reduction."""
    import torch

    x = torch.ones(mib * 2**20 // 4)
    return x.numel() * 4 / best_time(lambda: x.sum(), repeats) / 1e9

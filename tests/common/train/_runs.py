"""Helpers: run ``python -m common.train`` in subprocesses and compare saved states."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[3]

# A small, fast LM run (1 layer), checkpointing often.
LM_ARGS = ["--set", "model.n_layers=1", "--set", "train.progress=false",
           "--set", "train.log_every=1", "--set", "optim.warmup_steps=1"]


def env(devices: int = 1, **extra) -> dict:
    e = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    e.pop("HEADLAB_COORDINATOR", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def command(workdir, *args) -> list[str]:
    return [sys.executable, "-m", "common.train", "lm", "--workdir", str(workdir), *LM_ARGS,
            *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env_, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env_, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

"""Run a cases file under pytest in a subprocess with 8 fake CPU devices.

JAX fixes the device count when it starts, so the 8-device cases (files named ``_*_cases.py``,
not collected by the default run) run in their own process; the calling test fails with the
tail of that run's output. Every case must pass: a skip inside is a failure here.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_eight_devices(cases: pathlib.Path, *pytest_args: str, timeout: int = 900) -> str:
    """Run ``pytest cases pytest_args`` with 8 fake CPU devices; returns its stdout."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args,
         str(cases)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
    return proc.stdout

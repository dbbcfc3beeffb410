"""Runs _finetune_cases.py under pytest in a subprocess with 8 fake CPU devices."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def run_cases(marker: str) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider", "-m", marker,
         str(pathlib.Path(__file__).with_name("_finetune_cases.py"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
    return proc.stdout


@pytest.mark.multidevice
def test_finetune_tiny_pretrained_on_eight_devices():
    run_cases("not slow")


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.smollm2
def test_finetune_smollm2_on_eight_devices(smollm2_path):
    out = run_cases("slow")
    print(out[-1500:])

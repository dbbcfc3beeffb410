"""Runs _finetune_cases.py under pytest in a subprocess with 8 fake CPU devices."""

import pathlib

import pytest

from tests.eight_devices import run_on_eight_devices


def run_cases(marker: str) -> str:
    return run_on_eight_devices(pathlib.Path(__file__).with_name("_finetune_cases.py"), "-s",
                                "-m", marker, timeout=1200)


@pytest.mark.multidevice
def test_finetune_tiny_pretrained_on_eight_devices():
    run_cases("not slow")


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.smollm2
def test_finetune_smollm2_on_eight_devices(smollm2_path):
    out = run_cases("slow")
    print(out[-1500:])

"""Runs _sharded_cases.py in a subprocess with 8 fake CPU devices: PINE on a model sharded over
a mesh gives the single-device logits."""

import pathlib

import pytest

from tests.eight_devices import run_on_eight_devices


@pytest.mark.slow
@pytest.mark.multidevice
def test_pine_on_eight_devices():
    run_on_eight_devices(pathlib.Path(__file__).with_name("_sharded_cases.py"))

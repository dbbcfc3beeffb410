"""Runs _sharded_cases.py in a subprocess with 8 fake CPU devices: the act_calibration run on a
model sharded over a mesh gives the one-device numbers."""

import pathlib

import pytest

from tests.eight_devices import run_on_eight_devices


@pytest.mark.slow
@pytest.mark.multidevice
def test_act_calibration_on_eight_devices():
    run_on_eight_devices(pathlib.Path(__file__).with_name("_sharded_cases.py"))

"""Runs _multidevice_cases.py under pytest in a subprocess with 8 fake CPU devices.

A subprocess keeps the rest of the suite on one device (the device count is fixed when jax
initialises).
"""

import pathlib

import pytest

from tests.eight_devices import run_on_eight_devices


@pytest.mark.multidevice
def test_eight_device_cases():
    run_on_eight_devices(pathlib.Path(__file__).with_name("_multidevice_cases.py"), timeout=600)

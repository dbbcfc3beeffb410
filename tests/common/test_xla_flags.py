"""common.xla_flags: importing common changes nothing; entry points opt in only when safe."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import xla_flags
from common.xla_flags import XNN_FLAG, enable_xnn, jaxlib_defines

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_importing_common_leaves_the_environment_unchanged():
    # ``import common`` alone: exactly the same environment. The library's modules: the same
    # environment as after ``import jax`` (which itself sets TF_CPP_MIN_LOG_LEVEL and
    # TPU_SKIP_MDS_QUERY), and XLA_FLAGS untouched in particular.
    check = ("assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
             "print('ok')")
    plain = "import os; before = dict(os.environ)\nimport common\n" + check
    library = ("import os, jax; before = dict(os.environ)\n"
               "import common, common.configs, common.xla_flags, common.cli, common.train.cli\n"
               "import common.models, common.interp, common.sharding\n" + check)
    for env in ({"XLA_FLAGS": ""}, {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}):
        for code in (plain, library):
            out = _python(code, HEADLAB_XNN="1", **env)
            assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_probe_reads_this_jaxlib():
    assert not jaxlib_defines("xla_cpu_no_such_flag_for_headlab_tests")
    name, _, value = XNN_FLAG.lstrip("-").partition("=")
    assert jaxlib_defines(name) >= jaxlib_defines(name, value)  # more needles, never more true


@pytest.mark.parametrize("known", [True, False])
def test_added_only_when_jaxlib_defines_the_flag(known, monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)  # as in a fresh process
    monkeypatch.setattr(xla_flags, "jaxlib_defines", lambda *needles: known)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert enable_xnn(env) is known
    assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8" + (f" {XNN_FLAG}" if known
                                                                                else ""))
    empty = {}
    assert enable_xnn(empty) is known
    assert empty == ({"XLA_FLAGS": XNN_FLAG} if known else {})


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_DISABLED"},
    {"XLA_FLAGS": "--foo=1 --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"},
    {"XLA_FLAGS": "--foo=1", "HEADLAB_XNN": "0"},
    {"HEADLAB_XNN": "0"},
])
def test_the_users_choice_is_kept(env, monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    monkeypatch.setattr(xla_flags, "jaxlib_defines", lambda *needles: True)
    before = dict(env)
    assert enable_xnn(env) is False and env == before


def test_too_late_once_a_backend_exists(monkeypatch):
    import jax

    jax.devices()  # this process's backend now exists
    monkeypatch.setattr(xla_flags, "jaxlib_defines", lambda *needles: True)
    env = {}
    assert enable_xnn(env) is False and env == {}


def test_an_entry_point_opts_in_and_jax_accepts_the_flag():
    # The real probe, in a fresh process as an entry point would do it; with the flag added,
    # XLA must start (it aborts on an unknown flag), so a wrong "yes" from the probe fails here.
    code = ("import os\n"
            "from common.xla_flags import enable_xnn, XNN_FLAG\n"
            "added = enable_xnn()\n"
            "assert added == (XNN_FLAG in os.environ.get('XLA_FLAGS', '')), os.environ['XLA_FLAGS']\n"
            "import jax, jax.numpy as jnp\n"
            "print(added, float(jnp.ones((8, 8)) .sum()))")
    out = _python(code, XLA_FLAGS="", HEADLAB_XNN="1", JAX_PLATFORMS="cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    added, total = out.stdout.split()
    assert total == "64.0"
    name, _, value = XNN_FLAG.lstrip("-").partition("=")
    assert added == str(jaxlib_defines(name, value))

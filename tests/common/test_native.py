"""common.native: the C++ kernels build, serve conv_max_pool under vmap and with NaNs, stay sharded
on a mesh, and fall back to the XLA path (with one warning naming why) when they cannot build.
(Values and gradients against a brute-force loop and PyTorch: tests/common/test_conv_pool.py.)"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common.conv_pool as cp
from tests.common.test_conv_pool import brute_force, require_native
from tests.eight_devices import run_on_eight_devices

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _xla(x, w, pool):
    """The reference: XLA's convolution and reduce_window max (NaNs propagate)."""
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, pool, pool, 1), (1, pool, pool, 1),
                                 "VALID")


def test_nan_in_a_window_gives_nan_there_and_numbers_elsewhere(monkeypatch):
    require_native()
    monkeypatch.setattr(cp, "NATIVE_MAX_CIN", 64)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 13, 12, 3)).astype(np.float32)
    x[1, 6, 6, 0] = np.nan  # reaches the conv outputs (2..6, 2..6): pooled windows (0..2, 0..2)
    w = rng.normal(size=(5, 5, 3, 4)).astype(np.float32)
    out = np.asarray(jax.jit(cp.conv_max_pool, static_argnums=2)(x, w, 3))
    ref = brute_force(x, w, 3)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out).any() and not np.isnan(out[0]).any()
    np.testing.assert_allclose(out[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-5, atol=1e-5)


def test_vmap_over_a_population_of_kernels(monkeypatch):
    """A vmapped call (a population of models, each its own kernel) runs member by member."""
    require_native()
    monkeypatch.setattr(cp, "NATIVE_MAX_CIN", 64)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 11, 10, 3)).astype(np.float32)
    ws = rng.normal(size=(4, 3, 3, 3, 16)).astype(np.float32)
    g = rng.normal(size=(4, 3, 3, 2, 16)).astype(np.float32)  # per member: [3, 3, 2, 16]
    loss = lambda w, g: jnp.sum(cp.conv_max_pool(x, w, 3) * g)
    out = jax.jit(jax.vmap(lambda w: cp.conv_max_pool(x, w, 3)))(ws)
    dws = jax.jit(jax.vmap(jax.grad(loss)))(ws, g)
    for i in range(4):
        np.testing.assert_allclose(out[i], _xla(x, ws[i], 3), rtol=1e-5, atol=1e-5)
        ref = jax.grad(lambda w, gi: jnp.sum(_xla(x, w, 3) * gi))(ws[i], g[i])
        np.testing.assert_allclose(dws[i], ref, rtol=1e-4, atol=1e-4)


def test_the_native_path_is_the_one_taken(monkeypatch):
    """With the kernels available, conv_max_pool's program calls them (and not otherwise)."""
    require_native()
    x, w = jnp.zeros((2, 9, 9, 3)), jnp.zeros((3, 3, 3, 8))
    hlo = lambda: jax.jit(jax.grad(lambda w: cp.conv_max_pool(x, w, 2).sum())).lower(w).as_text()
    monkeypatch.setattr(cp, "NATIVE_MAX_CIN", 4)
    assert "headlab_conv_max_pool_fwd" in hlo() and "headlab_conv_max_pool_dw" in hlo()
    monkeypatch.setattr(cp, "NATIVE_MAX_CIN", 0)
    assert "headlab_conv_max_pool" not in hlo()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                          capture_output=True, text=True, timeout=300)


def test_without_a_compiler_the_xla_path_runs_and_says_why(tmp_path):
    code = """
        import logging, numpy as np, jax, jax.numpy as jnp
        logging.basicConfig()
        from common import native
        from common.conv_pool import conv_max_pool
        try:
            native.library()
        except native.NativeBuildError as e:
            print("BUILD ERROR:", str(e).splitlines()[0])
        assert not native.available()
        x = jnp.ones((1, 7, 7, 3)); w = jnp.ones((3, 3, 3, 4))
        hlo = jax.jit(lambda w: conv_max_pool(x, w, 2)).lower(w).as_text()
        assert "headlab_conv" not in hlo
        print("OUT", float(conv_max_pool(x, w, 2).sum()))
    """
    proc = _run(code, CXX=str(tmp_path / "no-such-compiler"), HEADLAB_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BUILD ERROR:" in proc.stdout and "no-such-compiler" in proc.stdout
    assert "native CPU kernels unavailable, using the XLA path" in proc.stderr
    assert "OUT 432.0" in proc.stdout  # 2 x 2 pooled x 4 channels x 27
    assert not list(tmp_path.glob("native/*"))  # nothing half-written in the cache


def test_a_failing_build_leaves_nothing_in_the_cache(tmp_path):
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler: error: out of cheese' >&2\n"
                    "for a; do case $a in *.so) : > \"$a\";; esac; done\nexit 1\n")
    fake.chmod(0o755)
    proc = _run("from common import native\nnative.library()", CXX=str(fake),
                HEADLAB_CACHE=str(tmp_path / "cache"))
    assert proc.returncode != 0 and "out of cheese" in proc.stderr
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_opting_out():
    proc = _run("from common import native\nprint(native.available())", HEADLAB_NATIVE="0")
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.multidevice
def test_sharded_batch_on_eight_devices():
    run_on_eight_devices(pathlib.Path(__file__).with_name("_native_sharded_cases.py"))


def test_a_damaged_cached_library_is_rebuilt(tmp_path):
    """A truncated library in the cache (e.g. a disk that filled up; dlopen would die of
    SIGBUS on it) is rebuilt, as is one without its digest."""
    code = "from common import native\nprint(native.library()._name)"
    first = _run(code, HEADLAB_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    path = pathlib.Path(first.stdout.strip())
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    second = _run(code, HEADLAB_CACHE=str(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert path.stat().st_size == size and pathlib.Path(second.stdout.strip()) == path
    path.with_name(path.name + ".sha256").unlink()  # a build killed before its digest was written
    third = _run(code, HEADLAB_CACHE=str(tmp_path))
    assert third.returncode == 0 and path.with_name(path.name + ".sha256").exists()

"""CPU kernels in C++ as XLA FFI custom calls, compiled on first use with the system's C++ compiler.

Why: on CPU, Pallas has no compiler (only its interpreter), and some hot ops of the projects are
shapes XLA:CPU runs far below the machine's speed; OAT's first CNN block (an RGB 5 x 5
convolution into 16 channels, then a 5 x 5 max pool, over about 1,700 crops per training step) is
the case in point (``common.conv_pool``). A kernel here is an ordinary C++ function bound with
XLA's FFI headers shipped in jaxlib (``jax.ffi.include_dir()``), run on XLA's intra-op thread pool.

How: :func:`library` compiles ``*.cc`` of this folder (with its ``*.h``) once per source,
compiler flags and jaxlib (``g++ -O3 -march=native``; ``$CXX`` overrides the compiler) into
``$HEADLAB_CACHE/native`` (default ``~/.cache/headlab/native``), writing to a temporary name and
renaming, so a killed build leaves nothing half-written; later processes load the cached
library. The targets are registered with JAX for the CPU platform. :func:`batch_split` wraps a call
whose data operands and results all have the batch as their leading axis (weights replicated):
on a mesh each device runs the kernel on its own part of the batch (no gather), and under
``vmap`` the call runs member by member.

Fallback: :func:`available` is False, and callers take their XLA path, when the default backend
is not the CPU, ``HEADLAB_NATIVE=0`` is set, or no compiler is found or the build fails (the
reason is logged once, with the compiler's message). ``.ci/run`` installs ``g++`` on a machine
without one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["available", "has_compiler", "library", "batch_split", "TARGETS", "NativeBuildError"]

log = logging.getLogger(__name__)

_SOURCES = sorted(pathlib.Path(__file__).parent.glob("*.cc"))
_HEADERS = sorted(pathlib.Path(__file__).parent.glob("*.h"))
#: the FFI target names and their handler symbols in the library
TARGETS = {
    "headlab_conv_max_pool_fwd": "HeadlabConvMaxPoolFwd",
    "headlab_conv_max_pool_dw": "HeadlabConvMaxPoolDw",
    "headlab_conv_max_pool_dx": "HeadlabConvMaxPoolDx",
}
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
if os.uname().machine in ("x86_64", "AMD64"):
    # whole 16-float vectors in one AVX-512 register where the CPU has them (GCC's default
    # for -march=native on such CPUs is 256-bit); an x86 flag only
    _FLAGS.insert(2, "-mprefer-vector-width=512")


class NativeBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded (the compiler's message included)."""


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("HEADLAB_CACHE") or pathlib.Path.home() / ".cache" / "headlab"
    return pathlib.Path(root) / "native"


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeBuildError("no C++ compiler found (install g++, or set CXX)")
    return cxx


def has_compiler() -> bool:
    """Whether a C++ compiler is found (``$CXX``, else ``g++`` or ``c++`` on the PATH)."""
    try:
        return shutil.which(_compiler()) is not None
    except NativeBuildError:
        return False


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(lib: pathlib.Path) -> pathlib.Path:
    return lib.with_name(lib.name + ".sha256")


def _atomic_write(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _intact(lib: pathlib.Path) -> bool:
    """Whether the cached library is the one its build wrote (its SHA-256 beside it): a
    truncated shared object would crash the process in ``dlopen`` (SIGBUS), not raise."""
    try:
        return _digest(lib) == _digest_path(lib).read_text().strip()
    except OSError:
        return False


def _build(cxx: str) -> pathlib.Path:
    """Compile the sources into the cache (once per source, flags, compiler and jaxlib)."""
    import jaxlib

    key = hashlib.sha256()
    for src in (*_SOURCES, *_HEADERS):
        key.update(src.read_bytes())
    key.update(" ".join([cxx, *_FLAGS, jaxlib.__version__, os.uname().machine]).encode())
    with open("/proc/cpuinfo", "rb") if os.path.exists("/proc/cpuinfo") else open(os.devnull, "rb") as f:
        # -march=native: a library built on another CPU (a shared cache) is not reused
        key.update(next((ln for ln in f if ln.startswith(b"flags")), b""))
    out = _cache_dir() / f"headlab_native_{key.hexdigest()[:16]}.so"
    if _intact(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", *map(str, _SOURCES), "-o", tmp]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise NativeBuildError(f"could not run the compiler {cxx}: {e}") from e
        if proc.returncode != 0:
            raise NativeBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        digest = _digest(pathlib.Path(tmp))
        os.replace(tmp, out)
        _atomic_write(_digest_path(out), digest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _open(path: pathlib.Path) -> ctypes.CDLL:
    """Load the library and check that it has every handler."""
    try:
        lib = ctypes.CDLL(str(path))
        for symbol in TARGETS.values():
            getattr(lib, symbol)
    except (OSError, AttributeError) as e:
        raise NativeBuildError(f"could not load {path}: {e}") from e
    return lib


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels, built if needed and registered with JAX (once per process).

    A cached library that is not byte for byte the one its build wrote (truncated by a full
    disk, say) is rebuilt.

    Raises:
      NativeBuildError: no compiler, or the build or load failed.
    """
    lib = _open(_build(_compiler()))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib


@functools.cache
def _loads() -> bool:
    try:
        library()
    except NativeBuildError as e:
        log.warning("headlab native CPU kernels unavailable, using the XLA path: %s", e)
        return False
    return True


def available() -> bool:
    """Whether the native kernels can serve the current default backend (see the module doc)."""
    if os.environ.get("HEADLAB_NATIVE", "1") == "0" or jax.default_backend() != "cpu":
        return False
    return _loads()


def batch_split(impl: Callable, *, static: int, batched: int, rule: str) -> Callable:
    """Wrap ``impl(*static_args, *arrays)`` (its first ``batched`` arrays and all its results
    have the batch as their leading axis; the other arrays, e.g. weights, are whole on every
    device) so that it shards over the batch and maps under ``vmap``.

    Args:
      impl: the call, e.g. a ``jax.ffi.ffi_call``; its results' shapes follow its inputs'.
      static: how many leading arguments are static (hashable Python values).
      batched: how many of the arrays carry the batch.
      rule: Shardy's sharding rule, e.g. ``"n h w c, k l c o -> n p q o"`` (same letter, same
        axis; the batch factor first).
    Returns:
      ``f(*static_args, *arrays)`` with ``impl``'s results.
    """
    split = custom_partitioning(impl, static_argnums=tuple(range(static)))

    def batch_of(arg_shapes) -> P:
        spec = arg_shapes[0].sharding.spec
        return P(spec[0] if len(spec) else None)

    def infer(*args):
        mesh, arg_shapes, result_shape = args[static:]
        return jax.tree.map(lambda _: NamedSharding(mesh, batch_of(arg_shapes)), result_shape)

    def partition(*args):
        mesh, arg_shapes, result_shape = args[static:]
        b = batch_of(arg_shapes)
        arg_shardings = tuple(NamedSharding(mesh, b if i < batched else P())
                              for i in range(len(arg_shapes)))
        out = jax.tree.map(lambda _: NamedSharding(mesh, b), result_shape)
        return mesh, functools.partial(impl, *args[:static]), out, arg_shardings

    split.def_partition(partition=partition, infer_sharding_from_operands=infer,
                        sharding_rule=rule)

    @functools.cache
    def bound(*static_args):
        @jax.custom_batching.custom_vmap
        def call(*arrays):
            return split(*static_args, *arrays)

        @call.def_vmap
        def _member_by_member(axis_size, in_batched, *arrays):
            arrays = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                      for a, b in zip(arrays, in_batched, strict=True)]
            out = lax.map(lambda xs: call(*xs), arrays)
            return out, jax.tree.map(lambda _: True, out)

        return call

    return lambda *args: bound(*args[:static])(*args[static:])

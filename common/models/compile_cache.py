"""JAX's persistent compilation cache, on by default for the models (opt-out documented).

A new program (a model size, a prompt length, an intervention structure) costs 3-10 s of XLA
compilation on CPU. With the persistent cache a *second* Python process that runs the same
program loads the compiled executable from disk instead (SmolLM2's forward: about 0.3 s).

:func:`enable` turns it on the first time a model is loaded (``load_pretrained``) or first run
through a jitted entry point (``run_with_cache``, ``forward``, ``model(ids)``, ``generate``),
never at import: ``import common`` changes no JAX configuration. The folder is
``$HEADLAB_JAX_CACHE``, else ``jax/`` beside ``$HEADLAB_CACHE`` (the model cache, default
``~/.cache/headlab/models``, so by default ``~/.cache/headlab/jax``).

Opting out: ``HEADLAB_COMPILATION_CACHE=0`` in the environment (checked at each call, so it
works from a notebook before the first load). A cache folder you configured yourself
(``jax.config.update("jax_compilation_cache_dir", ...)`` or ``JAX_COMPILATION_CACHE_DIR``) is
left as it is. Only programs that took at least ``jax_persistent_cache_min_compile_time_secs``
to compile are written: we lower JAX's default of 1 s to :data:`MIN_COMPILE_SECS` (SmolLM2's
forward compiles in about 1 s on CPU, just under JAX's bar) unless that setting was changed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import jax

_ENABLED: dict[str, str | None] = {}  # {"dir": the folder set by us, or None when declined}

MIN_COMPILE_SECS = 0.2
"""Programs that compiled faster than this are not written (reading one back costs ~10 ms)."""
_JAX_DEFAULT_MIN_COMPILE_SECS = 1.0


def cache_folder() -> pathlib.Path:
    """``$HEADLAB_JAX_CACHE``, else ``jax/`` beside ``$HEADLAB_CACHE`` (default
    ``~/.cache/headlab/jax``)."""
    env = os.environ.get("HEADLAB_JAX_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    models = os.environ.get("HEADLAB_CACHE")
    base = pathlib.Path(models).expanduser() if models else pathlib.Path.home() / ".cache/headlab/models"
    return base.parent / "jax"


def opted_out() -> bool:
    """True when ``HEADLAB_COMPILATION_CACHE`` is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get("HEADLAB_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no",
                                                                             "off")


def enable() -> str | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_folder`, once per process.

    Returns the cache folder in use (ours or one the user configured), or None when opted
    out. Cheap after the first call.
    """
    if "dir" in _ENABLED:
        return _ENABLED["dir"]
    if opted_out():
        return None  # not remembered: the variable may be cleared later in the session
    current = jax.config.jax_compilation_cache_dir
    if current:  # the user's own choice stands
        _ENABLED["dir"] = current
        return current
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home, say: run without the cache rather than fail
        _ENABLED["dir"] = None
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_SECS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    _ENABLED["dir"] = str(folder)
    return str(folder)


@contextlib.contextmanager
def not_written():
    """Compile without writing to the persistent cache (reads still hit).

    For programs that close over large arrays, such as the shared training loop's step over a
    frozen model (the step takes no extra arguments): their executables carry the arrays as
    constants. Soft injection's selection step over SmolLM2 made a 335 MB cache entry, and
    writing it took about 65 s of a 89 s call (23 s without the write); the entry never hits
    again, since the run's data are constants of the step too."""
    name = "jax_persistent_cache_min_compile_time_secs"
    before = getattr(jax.config, name)
    jax.config.update(name, 1e12)
    try:
        yield
    finally:
        jax.config.update(name, before)

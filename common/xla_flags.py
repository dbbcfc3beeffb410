"""XLA flags that an entry point owning its process may opt in to; nothing happens at import.

On CPU, XLA's XNNPACK graph fusion speeds up the matmul-heavy forwards (measured on SmolLM2
float32, 2 cores: prefill of 512 tokens 1.28 s -> 1.01 s, greedy decode 30.9 -> 34.2 tok/s;
``tools/bench_lm.py``). :func:`enable_xnn` switches it on; it is called by the programs that own
their process (``headlab``, ``python -m common.train``, ``tools/bench_lm.py``,
``tools/bench_interp.py``, ``tools/bench_attention.py``) before JAX creates its backend, unless
the user already chose (``XLA_FLAGS`` mentions it) or opts out with ``HEADLAB_XNN=0``. It has
no effect on GPU/TPU, nor once a JAX backend exists. A library import never calls it: importing
``common`` leaves the environment and other libraries' settings alone.

The flag is experimental and XLA aborts the process on a flag it does not know, so it is only
passed when the installed jaxlib defines it. :func:`jaxlib_defines` checks that by looking for
the flag's name and value in jaxlib's shared libraries (XLA registers every flag by its name
string; an enum value is in the option's proto descriptor). That is the truth for this jaxlib
in both directions, unlike a version range, whose upper end (the release that drops the flag)
cannot be known in advance; it reads the libraries through ``mmap`` once per process (about
0.15 s for jaxlib 0.10.2's 350 MB ``libjax_common.so`` when it is in the page cache) and runs
only when the flag would be added. GPU plugins are version-locked to jaxlib (same XLA).
"""

from __future__ import annotations

import functools
import importlib.util
import mmap
import os
import pathlib
import sys
from collections.abc import MutableMapping

XNN_FLAG = "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
OPT_OUT = "HEADLAB_XNN"  # HEADLAB_XNN=0: never add it


@functools.cache
def jaxlib_defines(*needles: str) -> bool:
    """Whether one of jaxlib's shared libraries contains every string in ``needles``."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    wanted = [n.encode() for n in needles]
    libs = [p for loc in spec.submodule_search_locations for p in pathlib.Path(loc).glob("*.so*")
            if p.is_file()]
    for lib in sorted(libs, key=lambda p: p.stat().st_size, reverse=True):
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if all(m.find(w) >= 0 for w in wanted):
                    return True
        except (OSError, ValueError):  # unreadable or empty file
            continue
    return False


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")  # never import JAX just to ask
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def enable_xnn(environ: MutableMapping[str, str] | None = None) -> bool:
    """Append :data:`XNN_FLAG` to ``XLA_FLAGS`` when that is safe and wanted; True if added.

    Call it first thing in a program's entry point, before JAX creates a backend. It adds
    nothing when ``HEADLAB_XNN=0``, when ``XLA_FLAGS`` already mentions ``xnn_graph_fusion``
    (the user's choice is kept as it is), when a JAX backend already exists (too late to take
    effect) or when this jaxlib does not define the flag.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get(OPT_OUT, "1") == "0" or "xnn_graph_fusion" in flags or _backend_started():
        return False
    name, _, value = XNN_FLAG.lstrip("-").partition("=")
    if not jaxlib_defines(name, value):
        return False
    env["XLA_FLAGS"] = f"{flags} {XNN_FLAG}".strip()
    return True

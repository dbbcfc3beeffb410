"""headlab's shared library: the per-head attention core, models, interpretability, training.

On CPU, XLA's XNNPACK graph fusion speeds up the matmul-heavy forwards (measured on SmolLM2
float32, 2 cores: prefill of 512 tokens 1.28 s -> 1.01 s, greedy decode 30.9 -> 34.2 tok/s;
``tools/bench_lm.py``). It is switched on here, before JAX creates its CPU backend, unless the
user already chose (``XLA_FLAGS`` mentions it) or opts out with ``HEADLAB_XNN=0``. It has no
effect on GPU/TPU, nor once a JAX backend exists.
"""

import os as _os

_XNN_FLAG = "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"

if _os.environ.get("HEADLAB_XNN", "1") != "0" and "xnn_graph_fusion" not in _os.environ.get(
    "XLA_FLAGS", ""
):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _XNN_FLAG).strip()

"""Multi-host start-up through ``jax.distributed`` (TPU pods, GPU clusters, local CPU tests).

``maybe_initialize()`` is called before anything touches a device:

* ``HEADLAB_COORDINATOR=host:port``, ``HEADLAB_NUM_PROCESSES``, ``HEADLAB_PROCESS_ID`` set
  (GPU nodes, or several local CPU processes in tests): explicit initialisation; on CPU the
  cross-process collectives use gloo;
* ``HEADLAB_DISTRIBUTED=1`` (set by ``tpu/launch.sh`` on every TPU VM worker, or on a SLURM
  GPU cluster): ``jax.distributed.initialize()`` with no arguments, which reads the TPU
  metadata / SLURM environment itself;
* otherwise: single process, nothing to do.
"""

from __future__ import annotations

import os

import jax

_done = False


def maybe_initialize() -> bool:
    """Initialise ``jax.distributed`` if the environment asks for it; True if it did."""
    global _done
    if _done:
        return True
    coord = os.environ.get("HEADLAB_COORDINATOR")
    if coord:
        try:
            n = int(os.environ["HEADLAB_NUM_PROCESSES"])
            pid = int(os.environ["HEADLAB_PROCESS_ID"])
        except (KeyError, ValueError) as e:
            raise ValueError("HEADLAB_COORDINATOR is set: HEADLAB_NUM_PROCESSES and "
                             f"HEADLAB_PROCESS_ID must be ints ({e})") from None
        if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)
        _done = True
    elif os.environ.get("HEADLAB_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        _done = True
    return _done

"""Preemption: on SIGTERM every process agrees on one step, saves it, and stops cleanly.

TPU VMs and spot GPU instances get SIGTERM some seconds before they are taken away. The loop
asks :meth:`PreemptionWatch.reached` after every compiled call; when it says yes, the loop saves
a checkpoint of that step (with the data-iterator state) and returns, and the command exits 0
saying so. Rerunning the same command resumes from that checkpoint.

* Several processes (``jax.distributed``): JAX's preemption sync manager (the coordination
  service's SIGTERM notifier, ``jax_enable_preemption_service``) propagates the notice of any
  process to all of them and picks one safe step (the largest step any process has reported,
  plus one); :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` is True for
  that same step on every process, so they all save the same step.
* One process: a SIGTERM handler sets a flag that is read at the next step boundary (the handler
  itself does nothing else: saving from inside a signal handler could interrupt a save).
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Context manager: ``with PreemptionWatch() as w: ... if w.reached(step): save; stop``.

    ``reached(step)`` must be called with increasing steps, on every process at the same
    steps (the loop calls it once per compiled call).
    """

    def __init__(self) -> None:
        self.multi = jax.process_count() > 1
        self.signalled = threading.Event()
        self._old = None

    def __enter__(self) -> PreemptionWatch:
        # A signal handler can only be set from the main thread; elsewhere (a notebook's worker
        # thread) single-process preemption is not watched.
        if not self.multi and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled.set()

    def reached(self, step: int) -> bool:
        """True when the run should save ``step`` and stop (the same step on every process)."""
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled.is_set()

"""What a researcher watches during a run: TensorBoard scalars, device memory, a profiler trace.

* :class:`TensorBoard` writes event files under ``<workdir>/tensorboard`` through tensorboardX
  (the maintained TensorFlow-free writer; ``tensorboard --logdir <workdir>/tensorboard`` reads
  them). Only process 0 writes.
* :func:`device_memory` reads the allocator statistics of the local devices where the backend
  reports them (GPU, TPU; the CPU backend reports none).
* :class:`ProfileWindow` captures a :mod:`jax.profiler` trace of steps ``[start, start+steps)``
  into ``<workdir>/profile`` (open with TensorBoard's profile plugin or Perfetto).
"""

from __future__ import annotations

import pathlib

import jax

from common.configs import ConfigError


class TensorBoard:
    """Scalars to TensorBoard event files: ``write(step, {"loss": 1.2, ...})``."""

    def __init__(self, logdir: str | pathlib.Path):
        from tensorboardX import SummaryWriter

        self.logdir = pathlib.Path(logdir)
        self._writer = SummaryWriter(str(self.logdir), flush_secs=10)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, float(value), global_step=step)

    def close(self) -> None:
        self._writer.close()


def device_memory() -> dict[str, float]:
    """``{"memory/in_use_gib": ..., "memory/peak_gib": ...}``: the largest over this process's
    devices; empty where the backend keeps no statistics (CPU)."""
    in_use, peak = [], []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - unsupported on some backends/versions
            stats = None
        if stats:
            in_use.append(stats.get("bytes_in_use", 0))
            peak.append(stats.get("peak_bytes_in_use", 0))
    if not in_use:
        return {}
    return {"memory/in_use_gib": max(in_use) / 2**30, "memory/peak_gib": max(peak) / 2**30}


def parse_profile(spec: str | None) -> tuple[int, int] | None:
    """``"START:STEPS"`` -> ``(start, steps)`` (steps after ``start`` steps were taken)."""
    if not spec:
        return None
    try:
        start, steps = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"--profile must be START:STEPS (two integers), got {spec!r}") from None
    if start < 0 or steps < 1:
        raise ConfigError(f"--profile {spec}: START must be >= 0 and STEPS >= 1")
    return start, steps


class ProfileWindow:
    """Trace steps ``[start, start + steps)``: call :meth:`before` ahead of each compiled call
    (with the step it starts at) and :meth:`after` with the step reached."""

    def __init__(self, window: tuple[int, int] | None, logdir: pathlib.Path):
        self.window, self.logdir, self.active, self.done = window, logdir, False, window is None

    def before(self, step: int) -> None:
        if self.done or self.active or step < self.window[0]:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        jax.profiler.start_trace(str(self.logdir))
        self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= sum(self.window):
            self.stop(state)

    def stop(self, state=None) -> None:
        if self.active:
            if state is not None:
                jax.block_until_ready(state)  # the traced steps' device work, not just dispatch
            jax.profiler.stop_trace()
            self.active, self.done = False, True

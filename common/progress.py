"""Progress a researcher can watch, in one style for every project: stages and bars.

    with stage("evaluate", "models over 19 prompt lengths"):
        ...                                   # prints the start line, then the time it took
    for x in bar(items, "theory"):            # a tqdm bar on stderr
        ...

A stage prints ``[project] name: what ...`` when it starts and ``[project] name done in 12.3 s``
when it ends (or ``failed after``), so no step longer than a few seconds passes in silence.
Output goes to stderr; ``HEADLAB_QUIET=1`` silences both (and the training loop's bar).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    """True when ``HEADLAB_QUIET=1``."""
    return os.environ.get("HEADLAB_QUIET") == "1"


def format_seconds(seconds: float) -> str:
    """``4.2 s``, ``1 min 36 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


@contextlib.contextmanager
def stage(name: str, what: str = "", *, prefix: str = "", stream: TextIO | None = None,
          enabled: bool = True) -> Iterator[None]:
    """Announce a stage of a run and report its wall time when it ends.

    Args:
      name: short stage name, e.g. ``"evaluate"``.
      what: what it does, shown on the start line.
      prefix: e.g. the project name, shown in brackets.
      stream: default stderr.
      enabled: False prints nothing (as does ``HEADLAB_QUIET=1``).
    """
    out = stream or sys.stderr
    show = enabled and not quiet()
    tag = f"[{prefix}] " if prefix else ""
    if show:
        print(f"{tag}{name}{': ' + what if what else ''} ...", file=out, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        if show:
            print(f"{tag}{name} failed after {format_seconds(time.perf_counter() - t0)}",
                  file=out, flush=True)
        raise
    if show:
        print(f"{tag}{name} done in {format_seconds(time.perf_counter() - t0)}", file=out,
              flush=True)


def bar(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
        enabled: bool = True) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar on stderr (none when disabled or ``HEADLAB_QUIET=1``)."""
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True,
                disable=not enabled or quiet())


class Laps:
    """Wall time of a run's consecutive stages, for its ``summary.json``.

    ``lap("train")`` records the seconds since the previous lap (or since creation) under
    ``"train"`` in :attr:`timings`; :attr:`start` is the creation time and :meth:`total` the
    seconds since.
    """

    def __init__(self) -> None:
        self.start = time.time()
        self._last = self.start
        self.timings: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.time()
        self.timings[name] = round(now - self._last, 1)
        self._last = now

    def total(self) -> float:
        return round(time.time() - self.start, 1)

"""Orbax checkpoints of the train state together with the data iterator state.

One checkpoint step directory holds two items written by one ``CheckpointManager.save``:

* ``state``: the :class:`~common.sharding.TrainState` (step, params, optimiser state), as sharded
  arrays; restored onto whatever mesh the restore target's shardings name (another mesh shape
  or device count works: orbax reshards on read);
* ``data``: JSON with the grain iterator state and the running checksum of the batches seen.

Saves are asynchronous (the arrays are copied to host, then written in a background thread),
the newest ``keep`` steps are kept. Orbax writes a step into a temporary directory and renames
it when complete, so a killed run never leaves a half-written step under its final name.
Files can still be damaged afterwards (a truncated copy, a full disk on a network file system):
after each save completes we record the size of every file in ``headlab_manifest.json``; on
restore a step whose files do not match, or that fails to read, is moved aside to
``<step>.corrupt`` (not deleted) with a warning and the previous step is used.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from common.rundir import atomic_write_text

MANIFEST = "headlab_manifest.json"
log = logging.getLogger(__name__)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step failed verification or restore and was skipped."""


class Checkpointer:
    """Save/restore ``(TrainState, data state)`` pairs under ``directory``.

    Args:
      directory: the ``checkpoints/`` folder of a run.
      keep: how many of the newest steps to keep.
      async_save: write in a background thread (the loop continues after the host copy).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.manager = self._open(keep, async_save)
        self._keep, self._async = keep, async_save
        self._unsealed: list[int] = []

    def _open(self, keep: int, async_save: bool) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.directory, options=options)

    # -- saving -------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start saving ``state`` and ``data_state`` (JSON-able) as ``step``."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
        # orbax waits for the previous async save before starting this one: seal finished ones.
        self._unsealed.append(step)
        self._seal(done=self._unsealed[:-1] if self.manager.is_saving_in_progress()
                   else list(self._unsealed))

    def wait(self) -> None:
        """Block until pending saves are on disk (and sealed with their manifest)."""
        self.manager.wait_until_finished()
        self._seal(done=list(self._unsealed))

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def _seal(self, done: list[int]) -> None:
        for step in done:
            self._unsealed.remove(step)
            if jax.process_index() == 0 and (self.directory / str(step)).is_dir():
                write_manifest(self.directory / str(step))

    # -- restoring ----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """Newest intact checkpoint as ``(step, state, data_state)``, or None if there is none.

        Args:
          abstract_state: restore target: a pytree of ``jax.ShapeDtypeStruct`` with shardings
            (e.g. ``ShardedInit.abstract``); the arrays come back with those shardings.
          step: restore exactly this step (no fallback) instead of the newest intact one.
        """
        self.manager.wait_until_finished()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        for s in steps:
            problem = verify_manifest(self.directory / str(s))
            if problem is None:
                try:
                    out = self.manager.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore()))
                    return s, out.state, dict(out.data)
                except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
                    problem = f"restore failed: {type(e).__name__}: {str(e)[:300]}"
            if step is not None:
                raise RuntimeError(f"checkpoint step {s} in {self.directory} is damaged: {problem}")
            self._quarantine(s, problem)
        return None

    def _quarantine(self, step: int, problem: str) -> None:
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt"
        warnings.warn(
            f"checkpoint step {step} in {self.directory} is damaged ({problem}); moved to "
            f"{dst.name} and falling back to the previous step", CorruptCheckpointWarning,
            stacklevel=3)
        if jax.process_index() == 0 and src.exists():
            n = 0
            while dst.exists():
                n += 1
                dst = self.directory / f"{step}.corrupt{n}"
            os.replace(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"headlab_quarantine_{step}")
        self.manager.reload()


def write_manifest(step_dir: pathlib.Path) -> None:
    """Record the relative path and size of every file under ``step_dir``."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            if name == MANIFEST:
                continue
            p = pathlib.Path(root) / name
            files[str(p.relative_to(step_dir))] = p.stat().st_size
    atomic_write_text(step_dir / MANIFEST, json.dumps({"files": files}, indent=1, sort_keys=True))


def verify_manifest(step_dir: pathlib.Path) -> str | None:
    """None if ``step_dir`` matches its manifest (or has none yet), else what is wrong."""
    path = step_dir / MANIFEST
    if not path.exists():
        return None  # saved but not sealed (run stopped right after): the restore attempt decides
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable {MANIFEST}: {e}"
    for rel, size in files.items():
        p = step_dir / rel
        if not p.exists():
            return f"missing file {rel}"
        if p.stat().st_size != size:
            return f"file {rel} has {p.stat().st_size} bytes, expected {size} (truncated?)"
    return None

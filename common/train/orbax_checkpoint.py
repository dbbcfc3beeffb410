"""Orbax checkpoints of the train state together with the data iterator state.

One checkpoint step directory holds two items written by one ``CheckpointManager.save``:

* ``state``: the :class:`~common.sharding.TrainState` (step, params, optimiser state), as sharded
  arrays; restored onto whatever mesh the restore target's shardings name (another mesh shape
  or device count works: orbax reshards on read);
* ``data``: JSON with the grain iterator state and the running checksum of the batches seen.

Saves are asynchronous (the arrays are copied to host, then written in a background thread),
the newest ``keep`` steps are kept. Orbax writes a step into a temporary directory and renames
it when complete, so a killed run never leaves a half-written step under its final name.
Files can still be damaged afterwards (a truncated copy, a full disk on a network file system,
a flipped bit on a disk or in transit): at save we take a checksum of every array where it lives
(:mod:`common.train.checksum`, two position-weighted sums of its bits, sharded, a single-pass
reduction) and of the data state, and once the save completes we record them with the size of
every file in ``headlab_manifest.json``. On restore a step whose files do not match, that fails
to read, or whose restored arrays or data state do not match their checksums is moved aside to
``<step>.corrupt`` (not deleted) with a warning naming the file or array, and the previous step
is used.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from common.rundir import atomic_write_text
from common.train.checksum import host_checksums, json_crc, tree_checksums
from common.train.step import leaf_names

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
        self._sums: dict[int, tuple] = {}  # step -> (names, checksums on device, data CRC)

    def _open(self, keep: int, async_save: bool) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.directory, options=options)

    # -- saving -------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start saving ``state`` and ``data_state`` (JSON-able) as ``step``.

        The arrays' checksums are dispatched first, on device, on exactly the arrays being
        written; their few bytes are fetched when the save is sealed, so the loop does not
        wait for them.
        """
        self._sums[step] = (leaf_names(state), tree_checksums(state), json_crc(data_state))
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
            names, device_sums, data_crc = self._sums.pop(step)
            with jax.transfer_guard("allow"):
                sums = np.asarray(jax.device_get(device_sums)).astype(np.int64).tolist()
            if jax.process_index() == 0 and (self.directory / str(step)).is_dir():
                write_manifest(self.directory / str(step), {
                    "arrays": dict(zip(names, sums, strict=True)), "data_crc32": data_crc})

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
                except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
                    problem = f"restore failed: {type(e).__name__}: {str(e)[:300]}"
                else:
                    problem = verify_checksums(self.directory / str(s), out.state, dict(out.data))
                    if problem is None:
                        return s, out.state, dict(out.data)
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


def write_manifest(step_dir: pathlib.Path, sums: dict | None = None) -> None:
    """Record the relative path and size of every file under ``step_dir``, and ``sums``
    (``{"arrays": {name: [s0, s1]}, "data_crc32": int}``, see :meth:`Checkpointer.save`)."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            if name == MANIFEST:
                continue
            p = pathlib.Path(root) / name
            files[str(p.relative_to(step_dir))] = p.stat().st_size
    atomic_write_text(step_dir / MANIFEST, json.dumps({"files": files, **(sums or {})}, indent=1,
                                                      sort_keys=True))


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


def verify_checksums(step_dir: pathlib.Path, state: Any, data_state: dict) -> str | None:
    """None if the restored ``state`` and ``data_state`` match the checksums in the manifest
    (or it has none: saved before checksums, or not sealed), else which array differs."""
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    want = manifest.get("arrays")
    if want is not None:
        got = dict(zip(leaf_names(state), host_checksums(state), strict=True))
        if set(got) != set(want):
            return (f"the checkpoint's arrays {sorted(set(want) ^ set(got))[:3]} differ from the "
                    "restore target's")
        bad = [name for name in want if list(want[name]) != got[name]]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            return f"array {bad[0]!r}{more} does not match its checksum (flipped bits?)"
    if "data_crc32" in manifest and manifest["data_crc32"] != json_crc(data_state):
        return "the data-iterator state does not match its checksum"
    return None

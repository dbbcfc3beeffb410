"""Grain pipelines: deterministic, resumable, sharded by JAX process.

The order of examples is a pure function of ``(source, seed)``: the source is shuffled once per
epoch (grain reseeds every epoch), cut into *global* batches of ``global_batch_size`` examples,
and process ``p`` of ``P`` reads rows ``[p * B/P, (p + 1) * B/P)`` of every global batch, which
``jax.make_array_from_process_local_data`` assembles into the global batch again. The global
batch sequence is therefore the same for any number of processes, and a single-process run sees
the very batches a pod run sees. Each process reads only its own records.

Iterators are grain ``DatasetIterator``s: ``get_state()`` is a small JSON-able dict saved with the
checkpoint and ``set_state()`` resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np


def stack_examples(examples: Sequence[Any]) -> Any:
    """Stack a list of (nested dicts of) arrays along a new leading batch axis."""
    return jax.tree.map(lambda *xs: np.stack(xs), *examples)


def batched_dataset(
    source,
    *,
    global_batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's slice of the global batches of ``source``.

    Args:
      source: a random-access source (``len`` + ``__getitem__``): a list, a grain/TFDS data
        source, an :class:`ArrayRecordDataSource`, ...
      global_batch_size: examples per optimiser step summed over all processes.
      seed: shuffling seed (per-epoch reseeding is derived from it).
      num_epochs: ``None`` repeats forever.
      transform: applied to each example (e.g. parse bytes, tokenise) before batching.
      process_index, process_count: default ``jax.process_index()``/``jax.process_count()``.

    Returns:
      A ``MapDataset`` of local batches ``[global_batch_size / process_count, ...]`` with
      ``drop_remainder`` (every step has a full batch).
    """
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if global_batch_size % n:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by {n} processes")
    if len(source) < global_batch_size:
        raise ValueError(f"source has {len(source)} examples, fewer than one global batch "
                         f"({global_batch_size})")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if transform is not None:
        ds = ds.map(transform)
    ds = ds.batch(global_batch_size // n, drop_remainder=True, batch_fn=stack_examples)
    return ds[p::n] if n > 1 else ds


def generated_batches(
    make_batch: Callable[[int], Any],
    *,
    num_batches: int = 2**40,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's rows of generated global batches (online data, e.g. fresh regressions).

    Args:
      make_batch: ``step -> global batch`` (a dict of ``[global_batch, ...]`` numpy arrays); it
        must be a pure function of ``step`` (e.g. seed a ``np.random.default_rng((seed, step))``).
      num_batches: length of the (lazy) dataset.

    Returns:
      A ``MapDataset`` whose element ``i`` is rows ``[p * B/P, (p + 1) * B/P)`` of
      ``make_batch(i)``.
    """
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count

    def rows(i):
        batch = make_batch(int(i))
        size = len(jax.tree.leaves(batch)[0])
        if size % n:
            raise ValueError(f"generated batch of {size} rows is not divisible by {n} processes")
        local = size // n
        return jax.tree.map(lambda x: x[p * local:(p + 1) * local], batch)

    return grain.MapDataset.range(num_batches).map(rows)


def iterate(ds: grain.MapDataset, *, prefetch_threads: int = 0):
    """An iterator over ``ds`` with ``get_state``/``set_state`` (optionally thread-prefetched)."""
    options = grain.ReadOptions(num_threads=prefetch_threads,
                                prefetch_buffer_size=2 * prefetch_threads)
    it = ds.to_iter_dataset(options)
    return iter(it)

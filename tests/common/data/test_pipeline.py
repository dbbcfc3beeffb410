"""Grain pipelines: deterministic, resumable, sharded by process; ArrayRecord and TFDS sources."""

import sys

import numpy as np
import pytest

from common.data import (
    ArrayRecordExamples,
    ArraySource,
    InducedTokens,
    batched_dataset,
    generated_batches,
    iterate,
    write_array_record,
)


def test_induced_tokens_repeat_their_prefix():
    ex = InducedTokens(10, 9, 50, seed=1)[3]["input_ids"]
    assert ex.shape == (9,) and ex.dtype == np.int32
    np.testing.assert_array_equal(ex[:4], ex[4:8])
    assert ex[8] == 0 and ex[:4].min() >= 1 and ex[:4].max() < 50
    with pytest.raises(IndexError, match="out of range"):
        InducedTokens(10, 9, 50)[10]


@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_rebuild_the_single_process_batches(processes):
    src = ArraySource({"i": np.arange(40)})
    whole = batched_dataset(src, global_batch_size=8, seed=3, process_index=0, process_count=1)
    parts = [batched_dataset(src, global_batch_size=8, seed=3, process_index=p,
                             process_count=processes) for p in range(processes)]
    for step in range(12):  # crosses epochs (5 batches per epoch)
        glued = np.concatenate([part[step]["i"] for part in parts])
        np.testing.assert_array_equal(glued, whole[step]["i"])


def test_epochs_are_permutations_reshuffled_each_epoch():
    src = ArraySource({"i": np.arange(40)})
    ds = batched_dataset(src, global_batch_size=8, seed=0, process_index=0, process_count=1)
    e0 = np.concatenate([ds[k]["i"] for k in range(5)])
    e1 = np.concatenate([ds[k]["i"] for k in range(5, 10)])
    assert sorted(e0) == list(range(40)) and sorted(e1) == list(range(40))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, np.arange(40))
    other = batched_dataset(src, global_batch_size=8, seed=1, process_index=0, process_count=1)
    assert not np.array_equal(other[0]["i"], ds[0]["i"])


def test_iterator_state_resumes_exactly():
    src = InducedTokens(64, 8, 30)
    ds = batched_dataset(src, global_batch_size=4, seed=5, process_index=0, process_count=1)
    it = iterate(ds)
    for _ in range(7):
        next(it)
    state = it.get_state()
    want = [next(it)["input_ids"] for _ in range(25)]
    fresh = iterate(ds)
    fresh.set_state(state)
    got = [next(fresh)["input_ids"] for _ in range(25)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_generated_batches_are_sliced_by_process():
    make = lambda step: {"x": np.arange(8) + 100 * step}
    ds = [generated_batches(make, process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(ds[0][3]["x"], [300, 301, 302, 303])
    np.testing.assert_array_equal(ds[1][3]["x"], [304, 305, 306, 307])


def test_bad_sizes_are_named():
    src = ArraySource({"i": np.arange(10)})
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        batched_dataset(src, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        batched_dataset(src, global_batch_size=16, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="differ in length"):
        ArraySource({"a": np.arange(3), "b": np.arange(4)})


def test_array_record_round_trip(tmp_path):
    src = InducedTokens(20, 12, 40, seed=2)
    path = tmp_path / "tokens.array_record"
    assert write_array_record(path, (src[i] for i in range(20))) == 20
    ar = ArrayRecordExamples(path)
    assert len(ar) == 20
    for i in (0, 7, 19):
        np.testing.assert_array_equal(ar[i]["input_ids"], src[i]["input_ids"])
    ds = batched_dataset(ar, global_batch_size=4, seed=0, process_index=0, process_count=1)
    ref = batched_dataset(src, global_batch_size=4, seed=0, process_index=0, process_count=1)
    np.testing.assert_array_equal(ds[6]["input_ids"], ref[6]["input_ids"])
    with pytest.raises(FileNotFoundError, match="missing.array_record"):
        ArrayRecordExamples(tmp_path / "missing.array_record")


def test_tfds_builder_to_array_record_without_tensorflow(tmp_path):
    from common.data.tfds_tokens import prepare_tokens, tokens_source

    path = prepare_tokens(tmp_path)
    assert any(p.name.startswith("headlab_tokens-train.array_record")
               for p in __import__("pathlib").Path(path).iterdir())
    train = tokens_source(tmp_path, "train")
    assert len(train) == 4096 and len(tokens_source(tmp_path, "validation")) == 256
    # the records are the generator's examples (TFDS shuffles their order on disk)
    ref = InducedTokens(4096, 64, 128, seed=0)
    on_disk = {train[i]["input_ids"].tobytes() for i in range(0, 4096, 97)}
    generated = {ref[i]["input_ids"].tobytes() for i in range(4096)}
    assert on_disk <= generated
    ds = batched_dataset(train, global_batch_size=8, seed=0, process_index=0, process_count=1)
    assert ds[0]["input_ids"].shape == (8, 64)
    assert "tensorflow" not in sys.modules

"""open_checkpoint: a checkpoint's shapes without reading it, each tensor read on demand (a
memory-mapped view for safetensors), equal to the eager loader's; bad files named in one line."""

import json

import numpy as np
import pytest

from common.weights import WeightsError, load_hf_folder, open_checkpoint


def _folder(tmp_path):
    from tests.common.models.test_sharded import write_checkpoint

    write_checkpoint(tmp_path, d=64, heads=4, kv=2, mlp=96, layers=2, vocab=50,
                     per_file_layers=1)
    return tmp_path


def test_handles_read_what_the_eager_loader_reads(tmp_path):
    folder = _folder(tmp_path)
    lazy = open_checkpoint(folder)
    eager = load_hf_folder(folder)
    assert lazy.arch == eager.arch == "llama" and lazy.config == eager.config
    assert set(lazy.tensors) == set(eager.tensors)
    for name, h in lazy.tensors.items():
        assert h.shape == eager.tensors[name].shape
        view = h.read()
        assert isinstance(view, np.memmap) and not view.flags.writeable
        np.testing.assert_array_equal(np.asarray(view), eager.tensors[name])
        np.testing.assert_array_equal(np.asarray(h), eager.tensors[name])  # __array__


def test_bad_files_are_one_clear_error(tmp_path):
    folder = _folder(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(WeightsError, match=rf"{shard.name}: truncated safetensors file"):
        open_checkpoint(folder)
    shard.unlink()
    with pytest.raises(WeightsError, match=rf"names shard '{shard.name}', which does not exist"):
        open_checkpoint(folder)
    with pytest.raises(WeightsError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "x.bin").write_bytes(b"1234")
    with pytest.raises(WeightsError, match="expected a .gguf file"):
        open_checkpoint(tmp_path / "x.bin")

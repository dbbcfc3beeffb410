"""Load a Hugging Face model folder: ``config.json``, safetensors weights, ``tokenizer.json``.

Weights come from ``model.safetensors`` or, for sharded checkpoints, the shards listed in
``model.safetensors.index.json``. PyTorch pickles (``pytorch_model.bin``) are refused: they
execute code on load and need torch.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from common.weights.errors import WeightsError
from common.weights.loaded_checkpoint import Checkpoint, arch_of, check_tensors, normalise_config
from common.weights.safetensors_file import read_safetensors
from common.weights.tokenizer import Tokenizer


def _read_json(path: pathlib.Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: corrupt {what} (not JSON: {e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: corrupt {what} (not a JSON object)")
    return data


def read_config(folder: pathlib.Path) -> dict:
    """``config.json`` of ``folder`` as a dict, or a :class:`WeightsError` if absent/corrupt."""
    path = folder / "config.json"
    if not path.is_file():
        raise WeightsError(f"{path}: missing config.json; a Hugging Face model folder needs it")
    return _read_json(path, "config.json")


def read_folder_tensors(folder: pathlib.Path, read) -> dict:
    """Every tensor of a Hugging Face folder's safetensors, through ``read(path, names)``
    (``names`` None: the whole file) -> ``{name: tensor}``: ``model.safetensors``, or the shards
    of ``model.safetensors.index.json``, each checked to hold what the index places in it."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return read(single, None)
    if index.is_file():
        weight_map = _read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: corrupt index: no 'weight_map' object")
        shards: dict[str, set[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, set()).add(name)
        tensors: dict = {}
        for shard, names in sorted(shards.items()):
            path = folder / shard
            if not path.is_file():
                raise WeightsError(f"{index}: names shard {shard!r}, which does not exist "
                                   f"in {folder}")
            got = read(path, names)
            absent = sorted(names - set(got))
            if absent:
                raise WeightsError(f"{path}: lacks tensor(s) {absent[:3]} that {index.name} "
                                   "places in this shard")
            tensors.update(got)
        return tensors
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise WeightsError(f"{folder}: has {others} but neither model.safetensors nor "
                           "model.safetensors.index.json")
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    hint = (f" (found {pickles}: PyTorch pickles are not read; convert them to safetensors)"
            if pickles else "")
    raise WeightsError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


def _read_weights(folder: pathlib.Path, dtype) -> dict[str, np.ndarray]:
    return read_folder_tensors(folder, lambda path, names: read_safetensors(path, dtype, names))


def load_hf_folder(path: str | os.PathLike, dtype=np.float32) -> Checkpoint:
    """Load a Hugging Face model folder.

    Args:
      path: folder with ``config.json``, ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``) and optionally ``tokenizer.json``.
      dtype: dtype of the floating-point tensors (``None`` keeps the stored dtype; bf16 via
        ``ml_dtypes.bfloat16``).

    Returns:
      A :class:`Checkpoint`; ``tokenizer`` is ``None`` only when ``tokenizer.json`` is absent.

    Raises:
      WeightsError: missing config.json or weights, unknown architecture, corrupt or
        truncated files, tensors that do not fit the config.
    """

    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    config = read_config(folder)
    arch = arch_of(config.get("model_type"), folder / "config.json")
    config = normalise_config(config, arch)
    tensors = check_tensors(_read_weights(folder, dtype), arch, config,
                            f"{folder} (config.json vs weights)")
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(folder / "tokenizer.json",
                                        bos_token_id=config.get("bos_token_id"),
                                        eos_token_id=config.get("eos_token_id"))
    return Checkpoint(arch=arch, config=config, tensors=tensors, tokenizer=tokenizer,
                      source=folder)

"""Hugging Face folders: tiny random transformers models saved with ``save_pretrained``."""

from __future__ import annotations

import json
import pathlib

import ml_dtypes
import numpy as np
import pytest

from common.weights import WeightsError, load_checkpoint, load_hf_folder
from tests.common.weights import tiny

KINDS = ["llama", "qwen2", "gpt2", "neox"]
ARCH = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2", "neox": "neox"}


def _reference(model) -> dict[str, np.ndarray]:
    """The model's own parameters under checkpoint names (transformers 5 renames Pythia's
    ``embed_out`` to ``lm_head`` in memory; files keep ``embed_out``)."""
    ref = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if model.config.model_type == "gpt_neox" and "lm_head.weight" in ref:
        ref["embed_out.weight"] = ref.pop("lm_head.weight")
    return ref


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    model = tiny.tiny_hf(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


def test_round_trip(saved):
    kind, model, folder = saved
    ckpt = load_hf_folder(folder)
    ref = _reference(model)
    assert ckpt.arch == ARCH[kind] and ckpt.source == folder and ckpt.tokenizer is None
    tied = bool(model.config.tie_word_embeddings)
    head = "embed_out.weight" if kind == "neox" else "lm_head.weight"
    assert set(ckpt.tensors) == set(ref) - ({head} if tied else set())
    for name, array in ckpt.tensors.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, ref[name], err_msg=name)
    cfg, hf = ckpt.config, model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings"):
        assert cfg[key] == getattr(hf, key), key
    if kind == "llama" or kind == "qwen2":
        assert cfg["rope_theta"] == hf.rope_parameters["rope_theta"]
        assert cfg["num_key_value_heads"] == hf.num_key_value_heads
        assert cfg["head_dim"] == hf.hidden_size // hf.num_attention_heads
    if kind == "neox":
        assert cfg["rotary_pct"] == hf.rope_parameters["partial_rotary_factor"] == 0.25
        assert cfg["rope_theta"] == hf.rope_parameters["rope_theta"]
        assert cfg["use_parallel_residual"] is True
    if kind == "gpt2":
        assert cfg["intermediate_size"] == 4 * hf.n_embd
        assert cfg["layer_norm_epsilon"] == hf.layer_norm_epsilon


def test_sharded_index(tmp_path):
    model = tiny.tiny_hf("llama")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    ckpt = load_checkpoint(tmp_path)
    ref = _reference(model)
    assert set(ckpt.tensors) == set(ref)
    for name, array in ckpt.tensors.items():
        np.testing.assert_array_equal(array, ref[name], err_msg=name)


def test_base_model_names_and_buffers(tmp_path):
    """Hub GPT-2 files store ``GPT2Model`` names (``h.0.attn.c_attn.weight``, no prefix) and
    the causal-mask buffer ``h.{i}.attn.bias``; both load."""
    from safetensors.numpy import save_file

    model = tiny.tiny_hf("gpt2")
    ref = _reference(model)
    stored = {k.removeprefix("transformer."): v for k, v in ref.items() if k != "lm_head.weight"}
    for i in range(model.config.n_layer):
        stored[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    save_file(stored, str(tmp_path / "model.safetensors"))
    model.config.to_json_file(tmp_path / "config.json")
    ckpt = load_hf_folder(tmp_path)
    assert set(ckpt.tensors) == set(ref) - {"lm_head.weight"}
    for name, array in ckpt.tensors.items():
        np.testing.assert_array_equal(array, ref[name], err_msg=name)


def test_bfloat16_checkpoint(tmp_path):
    import torch

    model = tiny.tiny_hf("gpt2").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    ref = _reference(model)  # bf16 -> f32 is exact
    as_f32 = load_hf_folder(tmp_path)
    as_stored = load_hf_folder(tmp_path, dtype=None)
    for name, array in as_f32.tensors.items():
        np.testing.assert_array_equal(array, ref[name], err_msg=name)
        assert as_stored.tensors[name].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(as_stored.tensors[name].astype(np.float32), ref[name])


def test_tokenizer_files(tmp_path):
    """``tokenizer.json`` + ``tokenizer_config.json`` agree with transformers' AutoTokenizer."""
    from transformers import AutoTokenizer

    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_llama(tok.get_vocab_size())
    model.save_pretrained(tmp_path)
    tiny.save_tokenizer_files(tmp_path, tok)
    ours = load_hf_folder(tmp_path).require_tokenizer()
    ref = AutoTokenizer.from_pretrained(tmp_path)
    for text in [*tiny.CORPUS, "a  12", "   leading", "trailing   ", "日本 🤗 x=1.5e-3"]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id) == (1, 2)
    assert ours.vocab_size == len(ref)
    chat = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "Thanks!"}]
    for gen in (True, False):
        text = ours.apply_chat_template(chat, add_generation_prompt=gen)
        assert text == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)


# ---- bad input: each a WeightsError naming the file and the fault ----------------------------


@pytest.fixture()
def llama_folder(tmp_path):
    tiny.tiny_hf("llama").save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_config(folder: pathlib.Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_config(llama_folder):
    (llama_folder / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"m/config\.json: missing config\.json"):
        load_hf_folder(llama_folder)


def test_corrupt_config(llama_folder):
    (llama_folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"m/config\.json: corrupt config\.json \(not JSON"):
        load_hf_folder(llama_folder)


def test_unknown_architecture(llama_folder):
    _edit_config(llama_folder, model_type="bert")
    with pytest.raises(WeightsError, match=r"m/config\.json: unknown architecture "
                                           r"model_type='bert'; supported: gpt2, gpt_neox"):
        load_hf_folder(llama_folder)


def test_wrong_shape(llama_folder):
    _edit_config(llama_folder, intermediate_size=128)
    with pytest.raises(WeightsError, match=r"m \(config\.json vs weights\): tensor "
                                           r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape "
                                           r"\(64, 96\), but the config implies \(64, 128\)"):
        load_hf_folder(llama_folder)


def test_missing_and_unexpected_tensors(llama_folder):
    _edit_config(llama_folder, num_hidden_layers=3)
    with pytest.raises(WeightsError, match=r"missing tensor\(s\) \['model\.layers\.2\."):
        load_hf_folder(llama_folder)
    _edit_config(llama_folder, num_hidden_layers=1)
    with pytest.raises(WeightsError, match=r"unexpected tensor 'model\.layers\.1\."):
        load_hf_folder(llama_folder)


def test_truncated_safetensors(llama_folder):
    path = llama_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors: truncated safetensors file: "
                                           r"tensor '.+' ends at byte \d+ but the file has "
                                           rf"{len(data) // 2} bytes"):
        load_hf_folder(llama_folder)
    path.write_bytes(data[:5])
    with pytest.raises(WeightsError, match=r"model\.safetensors: truncated safetensors file "
                                           r"\(5 bytes, no header\)"):
        load_hf_folder(llama_folder)


def test_corrupt_safetensors(llama_folder):
    path = llama_folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00garbag"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model\.safetensors: corrupt safetensors header "
                                           r"\(not JSON"):
        load_hf_folder(llama_folder)
    path.write_bytes(b"\xff" * 8 + bytes(data[8:]))
    with pytest.raises(WeightsError, match=r"model\.safetensors: corrupt or truncated "
                                           r"safetensors file: header length \d+"):
        load_hf_folder(llama_folder)


def test_corrupt_header_offsets(tmp_path):
    """Offsets that disagree with dtype x shape are caught, not read as garbage."""
    from safetensors.numpy import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32)}, str(path))
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["a"]["shape"] = [3, 3]
    text = json.dumps(header).encode().ljust(n)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    from common.weights.safetensors_file import read_safetensors

    with pytest.raises(WeightsError, match=r"x\.safetensors: corrupt header: tensor 'a' "
                                           r"F32\[3, 3\] needs 36 bytes"):
        read_safetensors(path)


def test_no_weights(llama_folder):
    (llama_folder / "model.safetensors").rename(llama_folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"m: no model\.safetensors or model\.safetensors\."
                                           r"index\.json \(found \['pytorch_model\.bin'\]"):
        load_hf_folder(llama_folder)


def test_missing_shard(tmp_path):
    tiny.tiny_hf("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(WeightsError, match=r"model\.safetensors\.index\.json: names shard "
                                           rf"'{shard.name}', which does not exist"):
        load_hf_folder(tmp_path)


def test_missing_tokenizer(llama_folder):
    ckpt = load_checkpoint(llama_folder)
    assert ckpt.tokenizer is None
    with pytest.raises(WeightsError, match=r"m/tokenizer\.json: no tokenizer found"):
        ckpt.require_tokenizer()


def test_not_a_folder(tmp_path):
    with pytest.raises(WeightsError, match="not a folder"):
        load_hf_folder(tmp_path / "absent")

"""GGUF loading against transformers' own GGUF loader and against the source weights."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from common.weights import WeightsError, load_checkpoint, load_gguf
from common.weights.gguf_file import unpermute_qk
from tests.common.weights import tiny

REPO = pathlib.Path(__file__).resolve().parents[3]


def hf_gguf_state(folder: pathlib.Path, filename: str) -> tuple[dict[str, np.ndarray], object]:
    """transformers' GGUF loader (dequantise + its own Q/K un-permutation): the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    return {k: v.numpy() for k, v in model.state_dict().items()}, model.config


@pytest.fixture(scope="module")
def tok():
    return tiny.tiny_tokenizer()


# ---- un-permutation in closed form ----------------------------------------------------------


@pytest.mark.parametrize("heads,head_dim,cols", [(1, 2, 1), (4, 16, 3), (3, 64, 0)])
def test_unpermute_closed_form(heads, head_dim, cols):
    """Row ``s * half + j`` of head ``h`` (Hugging Face) is GGUF row ``h * hd + 2 j + s``."""
    rng = np.random.default_rng(0)
    shape = (heads * head_dim, cols) if cols else (heads * head_dim,)
    gguf_rows = rng.normal(size=shape)
    hf_rows = unpermute_qk(gguf_rows, heads)
    half = head_dim // 2
    for h in range(heads):
        for s in range(2):
            for j in range(half):
                np.testing.assert_array_equal(hf_rows[h * head_dim + s * half + j],
                                              gguf_rows[h * head_dim + 2 * j + s])
    np.testing.assert_array_equal(unpermute_qk(tiny.llamacpp_permute(hf_rows, heads), heads),
                                  hf_rows)


def test_unpermute_rejects_odd_heads():
    with pytest.raises(ValueError, match="heads"):
        unpermute_qk(np.zeros((10, 4)), 4)


# ---- tiny GGUF files written in the test -----------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "qwen2"])
def test_tiny_gguf_matches_transformers_loader(tmp_path, tok, kind):
    vocab = tok.get_vocab_size()
    if kind == "qwen2":
        import torch
        import transformers as tf

        torch.manual_seed(0)
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(
            vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False))
        tiny._perturb(model)
        path = tiny.write_gguf(tmp_path / "m.gguf", model, tok, arch="qwen2", permute=False,
                               pre="qwen2")
    else:
        model = tiny.tiny_llama(vocab, tie=kind == "llama_tied")
        path = tiny.write_gguf(tmp_path / "m.gguf", model, tok)
    ckpt = load_gguf(path)
    ref, ref_config = hf_gguf_state(tmp_path, "m.gguf")
    source = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    assert ckpt.arch == "llama" and ckpt.source == path
    expected_names = set(ref) - ({"lm_head.weight"} if ref_config.tie_word_embeddings else set())
    assert set(ckpt.tensors) == expected_names
    for name, array in ckpt.tensors.items():
        assert array.dtype == np.float32, name
        np.testing.assert_array_equal(array, ref[name], err_msg=name)
        if tiny.gguf_name(name) in ("token_embd.weight", "blk.0.attn_q.weight",
                                    "blk.1.ffn_down.weight"):  # stored as Q8_0
            np.testing.assert_allclose(array, source[name], atol=np.abs(source[name]).max() / 127)
        else:  # stored as F32: the un-permuted rows are the source rows exactly
            np.testing.assert_array_equal(array, source[name], err_msg=name)
    c = ckpt.config
    assert c["model_type"] == ref_config.model_type
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert c[key] == getattr(ref_config, key), key
    assert c["rope_theta"] == ref_config.rope_parameters["rope_theta"]
    assert c["rms_norm_eps"] == pytest.approx(ref_config.rms_norm_eps, rel=1e-6)
    assert c["head_dim"] == 16


def test_dtype_and_dispatch(tmp_path, tok):
    path = tiny.write_gguf(tmp_path / "m.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok)
    f32 = load_checkpoint(path)
    bf16 = load_gguf(path, dtype=ml_dtypes.bfloat16)
    for name, array in bf16.tensors.items():
        assert array.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(array, f32.tensors[name].astype(ml_dtypes.bfloat16))


# ---- bad input: each a WeightsError naming the file and the fault ----------------------------


@pytest.fixture()
def good_gguf(tmp_path, tok):
    return tiny.write_gguf(tmp_path / "good.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok)


def _copy(src: pathlib.Path, dst: pathlib.Path, data: bytes) -> pathlib.Path:
    dst.write_bytes(data)
    return dst


def test_corrupt_magic(tmp_path, good_gguf):
    bad = _copy(good_gguf, tmp_path / "bad.gguf", b"GGML" + good_gguf.read_bytes()[4:])
    with pytest.raises(WeightsError, match=r"bad\.gguf: not a GGUF file \(magic b'GGML'"):
        load_gguf(bad)
    empty = _copy(good_gguf, tmp_path / "empty.gguf", b"")
    with pytest.raises(WeightsError, match=r"empty\.gguf: not a GGUF file \(empty file"):
        load_checkpoint(empty)


def test_truncated_in_header(tmp_path, good_gguf):
    cut = _copy(good_gguf, tmp_path / "cut.gguf", good_gguf.read_bytes()[:200])
    with pytest.raises(WeightsError, match=r"cut\.gguf: corrupt or truncated GGUF file"):
        load_gguf(cut)


def test_truncated_in_tensor_data(tmp_path, good_gguf):
    data = good_gguf.read_bytes()
    cut = _copy(good_gguf, tmp_path / "cut.gguf", data[:-1000])
    with pytest.raises(WeightsError, match=r"cut\.gguf: truncated GGUF file: tensor '.+' needs "
                                           rf"bytes up to {len(data)}"):
        load_gguf(cut)


def test_unknown_architecture(tmp_path, tok):
    path = tiny.write_gguf(tmp_path / "bert.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok,
                           arch="bert")
    with pytest.raises(WeightsError, match=r"bert\.gguf: unknown architecture "
                                           r"general\.architecture='bert'"):
        load_gguf(path)


def test_wrong_shape(tmp_path, tok):
    path = tiny.write_gguf(tmp_path / "shape.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok,
                           overrides={"feed_forward_length": 128})
    with pytest.raises(WeightsError, match=r"shape\.gguf .*tensor 'model\.layers\.0\.mlp\."
                                           r"(gate|up|down)_proj\.weight' has shape \((96, 64|"
                                           r"64, 96)\), but the config implies \((128, 64|"
                                           r"64, 128)\)"):
        load_gguf(path)


def test_missing_tensor(tmp_path, tok):
    path = tiny.write_gguf(tmp_path / "miss.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok,
                           drop=("blk.1.ffn_up.weight",))
    with pytest.raises(WeightsError, match=r"miss\.gguf .*missing tensor\(s\) "
                                           r"\['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        load_gguf(path)


def test_missing_tokenizer(tmp_path, tok):
    path = tiny.write_gguf(tmp_path / "notok.gguf", tiny.tiny_llama(tok.get_vocab_size()))
    ckpt = load_gguf(path)
    assert ckpt.tokenizer is None
    with pytest.raises(WeightsError, match=r"notok\.gguf \(tokenizer\.ggml\.\* metadata\): no "
                                           "tokenizer found"):
        ckpt.require_tokenizer()


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="nowhere: no such file or folder"):
        load_checkpoint(tmp_path / "nowhere")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(WeightsError, match=r"notes\.txt: expected a \.gguf file"):
        load_checkpoint(text)


# ---- SmolLM2-135M-Instruct: the real file ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_ckpt(smollm2_path):
    return load_gguf(smollm2_path)


@pytest.mark.smollm2
def test_smollm2_config(smollm2_ckpt):
    c = smollm2_ckpt.config
    assert smollm2_ckpt.arch == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"],
            c["num_key_value_heads"], c["head_dim"], c["intermediate_size"],
            c["vocab_size"]) == (30, 576, 9, 3, 64, 1536, 49152)
    assert c["rope_theta"] == 100000.0 and c["tie_word_embeddings"] is True
    assert (c["bos_token_id"], c["eos_token_id"]) == (1, 2)
    assert "lm_head.weight" not in smollm2_ckpt.tensors
    assert smollm2_ckpt.tokenizer is not None and smollm2_ckpt.tokenizer.chat_template


@pytest.mark.smollm2
def test_smollm2_state_dict_equals_transformers(smollm2_ckpt, hf_smollm2):
    """Every tensor, Q/K rows included, equals transformers' GGUF loader bit for bit."""
    ref = {k: v.detach().numpy() for k, v in hf_smollm2.state_dict().items()}
    ref_config = hf_smollm2.config
    assert set(smollm2_ckpt.tensors) == set(ref) - {"lm_head.weight"}
    for name in sorted(smollm2_ckpt.tensors):
        np.testing.assert_array_equal(smollm2_ckpt.tensors[name], ref[name], err_msg=name)
    np.testing.assert_array_equal(ref["lm_head.weight"],
                                  smollm2_ckpt.tensors["model.embed_tokens.weight"])
    assert ref_config.tie_word_embeddings and ref_config.rope_parameters["rope_theta"] == 1e5


_RSS_SCRIPT = """
import json, resource, sys, time


def peak_kib():
    # VmHWM: this process image's peak RSS. ru_maxrss can carry over the parent's peak
    # through fork + exec (here: a pytest process holding transformers models).
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from common.weights import load_gguf

before = peak_kib()
t0 = time.perf_counter()
ckpt = load_gguf(sys.argv[1])
seconds = time.perf_counter() - t0
weights = sum(a.nbytes for a in ckpt.tensors.values())
print(json.dumps({"peak_kib": peak_kib(), "before_kib": before, "weights_bytes": weights,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds}))
"""


@pytest.mark.smollm2
def test_smollm2_peak_rss(smollm2_path):
    """Peak resident memory of a fresh process loading SmolLM2 in float32: well under 2 GiB."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(smollm2_path)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mib = stats["peak_kib"] / 1024
    print(f"load_gguf SmolLM2: peak RSS {peak_mib:.0f} MiB (after imports "
          f"{stats['before_kib'] / 1024:.0f} MiB, float32 weights "
          f"{stats['weights_bytes'] / 2**20:.0f} MiB), "
          f"{stats['seconds']:.1f} s")
    assert stats["weights_bytes"] > 500 * 2**20  # really loaded 135M float32 parameters
    assert peak_mib < 1536

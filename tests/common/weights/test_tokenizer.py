"""Tokenizer from GGUF metadata and tokenizer.json against transformers and tokenizers itself.

References: the ``tokenizers`` object a tiny GGUF was written from, transformers' tokenizer
built from the same GGUF, and for SmolLM2 a brute-force re-implementation of llama.cpp's
``smollm`` pre-tokenizer (split off every digit, then GPT-2's regex) followed by the BPE
merges, written with the ``regex`` module.

transformers' GGUF converter leaves out the digit split; it gives other ids exactly where two
or more whitespace characters precede a digit (``"    1"``), so those strings are checked
against the brute-force reference only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import regex

from common.weights import load_gguf
from common.weights.tokenizer import Tokenizer, byte_alphabet
from tests.common.weights import tiny

STRINGS = [
    "Hello, world!",
    "The year 2024 had 366 days; pi is about 3.14159 and e about 2.71828.",
    "1234567890 0.5 -17 1e-9 1,000,000 $42.99 10%",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\n\n\nmany\n\n\n\nnewlines",
    "café naïve Straße Ελληνικά русский 日本語 中文 한국어 עברית العربية",
    "emoji 🤗🚀👍🏽 and a family 👨\u200d👩\u200d👧 and ❤️",
    "def square(x):\n    return x ** 2  # square it\n\nclass A:\n    pass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "I'm sure they'll've done it, won't they? She'd say 'yes'.",
    "URL https://example.com/path?q=a+b&lang=en#frag and email a.b@c.org",
    "mixed123abc456def 7x8=56",
    "JSON {\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "math: ∑_{i=1}^{n} i² = n(n+1)/2, √2 ≈ 1.414, ∞",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "<|endoftext|>text after a special token<file_sep>",
    "",
    " ",
    "   ",
    "x",
    "UPPER lower MiXeD CamelCaseIdentifier snake_case_name kebab-case",
    # Two or more whitespace characters before a digit: compared with the reference only.
    "    1,\n    2,\n    3",
    "x =  1",
    "a\n\n12",
]


def _ws_before_digit(text: str) -> bool:
    return regex.search(r"\s{2,}\p{N}", text) is not None


_GPT2_SPLIT = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def llamacpp_smollm_ids(text: str, vocab: dict[str, int], merges: list, specials: list[str]):
    """Brute-force reference: special tokens whole, then llama.cpp's ``smollm`` split (every
    digit alone, GPT-2's regex on the rest), then byte-level BPE on each piece."""
    from tokenizers.models import BPE

    bpe = BPE(vocab=vocab, merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                                   for m in merges])
    spell = byte_alphabet()
    pattern = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len,
                                                            reverse=True)) + ")"
    ids = []
    for part in regex.split(pattern, text):
        if part in specials:
            ids.append(vocab[part])
            continue
        for chunk in regex.split(r"(\p{N})", part):
            for piece in _GPT2_SPLIT.findall(chunk):
                spelled = "".join(spell[b] for b in piece.encode("utf-8"))
                ids.extend(t.id for t in bpe.tokenize(spelled))
    return ids


def test_byte_alphabet_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_alphabet() == bytes_to_unicode()


# ---- a tiny GGUF written in the test ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok")
    tok = tiny.tiny_tokenizer()
    path = tiny.write_gguf(folder / "t.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok)
    ours = load_gguf(path).require_tokenizer()
    return tok, ours, AutoTokenizer.from_pretrained(folder, gguf_file="t.gguf")


def test_tiny_gguf_ids(tiny_case):
    original, ours, hf = tiny_case
    compared = 0
    for text in STRINGS:
        ids = ours.encode(text)
        assert ids == original.encode(text, add_special_tokens=False).ids, text
        if not _ws_before_digit(text):
            assert ids == hf.encode(text, add_special_tokens=False), text
            compared += 1
        assert ours.decode(ids) == text
    assert compared >= 20
    assert ours.vocab_size == original.get_vocab_size() == len(hf)


def test_tiny_gguf_special_tokens_and_template(tiny_case):
    _, ours, hf = tiny_case
    assert (ours.bos_token_id, ours.eos_token_id) == (1, 2)
    ids = ours.encode("<|im_start|>hi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert ours.decode(ids, skip_special_tokens=True) == "hi"
    assert ours.decode(ids) == "<|im_start|>hi<|im_end|>"
    chat = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Bye"}]
    for gen in (True, False):
        text = ours.apply_chat_template(chat, add_generation_prompt=gen)
        assert text == hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


def test_gguf_add_bos_and_reader_fields(tmp_path):
    """``tokenizer.ggml.add_bos_token`` makes ``add_special_tokens`` prepend BOS, as in
    transformers; ``GGUFReader.fields`` are accepted as metadata too."""
    import gguf
    from transformers import AutoTokenizer

    tok = tiny.tiny_tokenizer()
    src = tiny.write_gguf(tmp_path / "t.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok)
    # Rewrite the file with add_bos_token = True.
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(tmp_path / "bos.gguf"), arch="llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = True if key == "tokenizer.ggml.add_bos_token" else field.contents()
        writer.add_key_value(key, value, field.types[0],
                             sub_type=field.types[-1] if len(field.types) > 1 else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = Tokenizer.from_gguf(tmp_path / "bos.gguf")
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file="bos.gguf")
    for text in ("hello world", "2 + 2 = 4"):
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text)
        assert ours.encode(text, add_special_tokens=True)[0] == 1
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
        # to_tokens' default follows the tokenizer's own setting: BOS here, as transformers.
        assert ours.add_bos_token
        assert ours.to_tokens(text).tolist() == [hf.encode(text)]
        assert ours.to_tokens(text, prepend_bos=False).tolist() == [
            hf.encode(text, add_special_tokens=False)]
    via_fields = Tokenizer.from_gguf_metadata(gguf.GGUFReader(tmp_path / "bos.gguf").fields)
    assert via_fields.encode(STRINGS[7], True) == ours.encode(STRINGS[7], True)


def test_no_chat_template(tmp_path):
    tok = tiny.tiny_tokenizer()
    path = tiny.write_gguf(tmp_path / "t.gguf", tiny.tiny_llama(tok.get_vocab_size()), tok,
                           chat_template=None)
    ours = Tokenizer.from_gguf(path)
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}])


# ---- SmolLM2-135M-Instruct -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizers(smollm2_path):
    from transformers import AutoTokenizer

    ours = Tokenizer.from_gguf(smollm2_path)
    hf = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    return ours, hf


@pytest.mark.smollm2
def test_smollm2_ids(smollm2_tokenizers):
    ours, hf = smollm2_tokenizers
    model = json.loads(hf.backend_tokenizer.to_str())["model"]
    specials = [t.content for t in hf.backend_tokenizer.get_added_tokens_decoder().values()]
    compared = 0
    for text in STRINGS:
        ids = ours.encode(text)
        assert ids == llamacpp_smollm_ids(text, model["vocab"], model["merges"], specials), text
        if not _ws_before_digit(text):
            assert ids == hf.encode(text, add_special_tokens=False), text
            compared += 1
        assert ours.decode(ids) == text
    assert compared >= 20
    # SmolLM2 splits numbers into single digits.
    assert [ours.id_to_token(i) for i in ours.encode("2024")] == ["2", "0", "2", "4"]
    assert ours.vocab_size == len(hf) == 49152
    assert (ours.bos_token_id, ours.eos_token_id) == (1, 2)
    assert ours.encode("hi", add_special_tokens=True) == hf.encode("hi")  # no BOS for SmolLM2


@pytest.mark.smollm2
def test_smollm2_chat_template(smollm2_tokenizers):
    ours, hf = smollm2_tokenizers
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Count to 3."},
         {"role": "assistant", "content": "1, 2, 3."},
         {"role": "user", "content": "Now in French, with émojis 🇫🇷"}],
    ]
    for chat in chats:
        for gen in (True, False):
            text = ours.apply_chat_template(chat, add_generation_prompt=gen)
            assert text == hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert not _ws_before_digit(text)
            assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
    text = ours.apply_chat_template(chats[0])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


@pytest.mark.smollm2
def test_smollm2_transformerlens_vocabulary(smollm2_tokenizers):
    """to_tokens / to_str_tokens / to_single_token; the BOS default is transformers' (none for
    SmolLM2), and prepend_bos=True puts <|im_start|> (id 1) first."""
    ours, hf = smollm2_tokenizers
    text = "When Mary and John went to the store, John gave a drink to"
    assert not ours.add_bos_token
    toks = ours.to_tokens(text)
    assert toks.dtype == np.int32 and toks.tolist() == [hf(text).input_ids]
    bos = ours.to_tokens(text, prepend_bos=True)
    assert bos.tolist() == [[1] + hf(text).input_ids] and hf.bos_token_id == 1
    assert ours.to_tokens([text, text.replace("John gave", "Mary gave")]).shape == (2, 14)
    with pytest.raises(ValueError, match="different token lengths"):
        ours.to_tokens([text, "When"])
    assert ours.to_str_tokens(text)[:4] == ["When", " Mary", " and", " John"]
    assert ours.to_str_tokens(toks) == ours.to_str_tokens(text)
    assert "".join(ours.to_str_tokens(toks)) == text
    assert ours.to_str_tokens(text, prepend_bos=True)[0] == "<|im_start|>"
    friday = ours.to_single_token(" Friday")
    assert friday == hf.convert_tokens_to_ids("ĠFriday") == hf.encode(" Friday")[0]
    assert ours.token_to_id(" Friday") is None  # the stored spelling is 'ĠFriday'
    with pytest.raises(ValueError, match=r"' Fridayness' is 2 tokens \[' Friday', 'ness'\]"):
        ours.to_single_token(" Fridayness")
    with pytest.raises(ValueError, match="is 0 tokens"):
        ours.to_single_token("")

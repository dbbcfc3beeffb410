"""Fixture makers: tiny transformers models, a tiny byte-level BPE tokenizer, tiny GGUF files.

Everything is built in the test from random weights or a few sentences of text; the
transformers models and the ``tokenizers`` object they start from are the references.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(12, 345))\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 2024 3.14159 -42 1e-5",
    "Unicode: café naïve Straße 日本語 中文 emoji 🤗🚀 ñandú",
    "Whitespace\tand\ttabs\n\n\nnew   lines    and  spaces",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi there.<|im_end|>\n",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on :data:`CORPUS`, split like SmolLM2
    (every digit alone, then GPT-2's split), with :data:`SPECIALS` as ids 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def vocab_and_merges(tok) -> tuple[list[str], list[str]]:
    """Tokens in id order and merges (``"a b"``) of a trained BPE tokenizer."""
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def tiny_llama(vocab_size: int, seed: int = 0, tie: bool = False, **overrides):
    """A random transformers Llama (4 heads, 2 KV heads, head_dim 16) in eval mode."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
              bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**kw))
    _perturb(model)
    return model.eval()


def _perturb(model) -> None:
    """Random init leaves norms at exactly 1; make every tensor distinct."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def tiny_hf(kind: str, seed: int = 0):
    """A random transformers causal LM of ``kind``: llama, qwen2, gpt2, neox."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llama":
        return tiny_llama(97, seed)
    if kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(
            vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=True))
    elif kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4,
                                                 n_positions=32, bos_token_id=0,
                                                 eos_token_id=0))
    elif kind == "neox":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=128,
            tie_word_embeddings=False))
    else:
        raise ValueError(kind)
    _perturb(model)
    return model.eval()


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: within each head, rows ``(first half, second half)`` are
    interleaved, ``(x_0, x_half, x_1, x_half+1, ...)``, for its adjacent-pair RoPE."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Hugging Face layer parameter -> GGUF name, written out here as the fixture's own table.
_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_TO_GGUF[rest]}"


def write_gguf(path: pathlib.Path, model, tokenizer=None, *, arch: str = "llama",
               quantize: tuple[str, ...] = ("token_embd.weight", "blk.0.attn_q.weight",
                                            "blk.1.ffn_down.weight"),
               permute: bool = True, chat_template: str | None = CHAT_TEMPLATE,
               pre: str = "smollm", drop: tuple[str, ...] = (), overrides: dict | None = None,
               name: str = "tiny") -> pathlib.Path:
    """Write ``model`` (a transformers Llama/Qwen2) as a llama.cpp-style GGUF file.

    Tensors named in ``quantize`` are stored as Q8_0, the rest as F32; Q/K rows are permuted
    as llama.cpp's converter does when ``permute``. ``overrides`` replaces integer
    ``{arch}.*`` metadata (``{"feed_forward_length": 128}``); ``drop`` leaves tensors out.
    """
    import gguf
    import torch

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(name)
    keys = {
        "block_count": cfg.num_hidden_layers,
        "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size,
        "feed_forward_length": cfg.intermediate_size,
        "attention.head_count": cfg.num_attention_heads,
        "attention.head_count_kv": cfg.num_key_value_heads,
        "rope.dimension_count": cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
    }
    keys.update(overrides or {})
    for key, value in keys.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", float(cfg.rope_parameters["rope_theta"]))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    if tokenizer is not None:
        tokens, merges = vocab_and_merges(tokenizer)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        if chat_template is not None:
            w.add_chat_template(chat_template)
    with torch.no_grad():
        state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf, array in state.items():
        name_ = gguf_name(hf)
        if name_ in drop:
            continue
        if permute and name_.split(".")[-2] in ("attn_q", "attn_k"):
            heads = cfg.num_attention_heads if "attn_q" in name_ else cfg.num_key_value_heads
            array = llamacpp_permute(array, heads)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if name_ in quantize:
            q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name_, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name_, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def save_tokenizer_files(folder: pathlib.Path, tok) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` (with chat template) via transformers."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)

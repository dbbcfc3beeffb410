"""Tokenizer: a ``tokenizers.Tokenizer`` with the token ids and chat template of its model.

Built from a Hugging Face ``tokenizer.json`` (with ``tokenizer_config.json`` /
``chat_template.jinja`` beside it for the chat template and special tokens), or from the
``tokenizer.ggml.*`` metadata of a GGUF file. The chat template is rendered with jinja2 the way
Hugging Face does (sandboxed, ``trim_blocks``, ``lstrip_blocks``).

GGUF byte-level BPE vocabularies are rebuilt with the pre-tokenizer llama.cpp uses for the
file's ``tokenizer.ggml.pre`` name. For SmolLM2 (``smollm``) that splits every digit first and
then applies the GPT-2 split, as the model's own ``tokenizer.json`` does. transformers' GGUF
converter omits the digit split; the ids then differ only where two or more whitespace
characters precede a digit (``"    1"``: ours ``ĠĠĠĠ 1``, as SmolLM2 was trained, transformers
``ĠĠĠ Ġ 1``).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from common.weights.errors import WeightsError
from common.weights.gguf_reader import plain_metadata, read_header

# llama.cpp token types (``tokenizer.ggml.token_type``).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) grouped by how they split text.
_GPT2_PRE = {"default", "gpt-2", "gpt2", "olmo", "jais", "phi-2"}
_DIGITS_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
               "minerva-7b"}
_SPLIT_PRE = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
              "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
              "deepseek-r1-qwen": _QWEN2_SPLIT}


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies.

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 are mapped,
    in order, to code points 256, 257, ... (so the space byte 0x20 becomes ``Ġ``).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_pre_tokenizer(pre: str | None, source: Any) -> pre_tokenizers.PreTokenizer:
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in _SPLIT_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_PRE[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre not in _GPT2_PRE and pre is not None:
        warnings.warn(f"{source}: unknown tokenizer.ggml.pre={pre!r}; using GPT-2's split",
                      stacklevel=3)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


class Tokenizer:
    """Text <-> token ids, special token ids and the chat template of one model.

    Attributes:
      backend: the wrapped ``tokenizers.Tokenizer``.
      bos_token_id, eos_token_id, pad_token_id: special token ids (``None`` if the model has
        none).
      chat_template: jinja2 source of the chat template, or ``None``.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 chat_template: str | None = None, source: Any = None):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.chat_template = chat_template
        self.source = source

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_id}, source={str(self.source)!r})")

    # ---- text <-> ids ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) are
        recognised; ``add_special_tokens`` adds the model's BOS/EOS where its post-processor
        says so."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of token ids (a list, or a 1-D numpy / jax array)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry spelled as stored (``"ĠFriday"``), or None; for text use
        :meth:`to_single_token` (``" Friday"``), which raises instead."""
        return self.backend.token_to_id(token)

    # ---- TransformerLens vocabulary ----------------------------------------------------------

    @functools.cached_property
    def add_bos_token(self) -> bool:
        """Whether this model's own tokenizer puts the BOS token first (its post-processor:
        ``tokenizer.ggml.add_bos_token`` in a GGUF, the template of ``tokenizer.json``). The
        default of ``prepend_bos``. False for SmolLM2, whose Hugging Face tokenizer adds none."""
        if self.bos_token_id is None:
            return False
        ids = self.backend.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == self.bos_token_id

    def _bos(self, prepend_bos: bool | None) -> bool:
        want = self.add_bos_token if prepend_bos is None else bool(prepend_bos)
        if want and self.bos_token_id is None:
            raise ValueError(f"{self.source}: prepend_bos=True but this tokenizer has no BOS token")
        return want

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool | None = None
                  ) -> np.ndarray:
        """``[batch, seq]`` int32 token ids of a string (batch 1) or a list of strings of the
        same token length (patching needs equal lengths; the error names them).

        ``prepend_bos``: put the BOS token (``bos_token_id``) first. The default, None, does
        what this model's own Hugging Face tokenizer does (:attr:`add_bos_token`): for SmolLM2
        no BOS, matching transformers, our logits-equal-Hugging-Face tests and how the model
        was trained (its chat turns start with ``<|im_start|>``, which is its BOS). Without a
        BOS the first token of the prompt becomes the attention sink (most heads park their
        attention there), so with ``prepend_bos=False`` read patterns and patching results at
        position 0 with that in mind; TransformerLens prepends BOS by default.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"to_tokens expects a str or a list of str, got {text!r}")
        bos = self._bos(prepend_bos)
        rows = [([self.bos_token_id] if bos else []) + self.encode(t) for t in texts]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            detail = ", ".join(f"{t!r}: {len(r)}" for t, r in zip(texts, rows, strict=True))
            raise ValueError(f"to_tokens: the prompts have different token lengths ({detail}); "
                             "batch prompts of equal length (or tokenise them one at a time)")
        return np.asarray(rows, dtype=np.int32).reshape(len(rows), lengths[0])

    def to_str_tokens(self, text: str | Iterable[int] | np.ndarray, *,
                      prepend_bos: bool | None = None) -> list[str]:
        """The text of each token of a string (tokenised as :meth:`to_tokens`) or of token ids
        (1-D; a ``[1, seq]`` batch too), e.g. ``['When', ' Mary', ' and']``."""
        if isinstance(text, str):
            ids = self.to_tokens(text, prepend_bos=prepend_bos)[0]
        else:
            ids = np.asarray(text)
            if ids.ndim == 2 and ids.shape[0] == 1:
                ids = ids[0]
            if ids.ndim != 1:
                raise ValueError(f"to_str_tokens: expected [seq] or [1, seq] token ids, got "
                                 f"shape {ids.shape}")
        return [self.decode([int(i)]) for i in ids]

    def to_single_token(self, text: str) -> int:
        """The id of the one token that spells ``text`` (``" Friday"`` with its space); a
        ``ValueError`` listing the pieces when ``text`` is several tokens (or none)."""
        ids = self.encode(text)
        if len(ids) != 1:
            pieces = [self.decode([i]) for i in ids]
            raise ValueError(f"to_single_token: {text!r} is {len(ids)} tokens {pieces} (ids "
                             f"{ids}), not one")
        return ids[0]

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    # ---- chat template ----------------------------------------------------------------------

    def _token(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.backend.id_to_token(token_id) or "")

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render ``messages`` (``[{"role": "user", "content": "..."}, ...]``) to a prompt.

        ``add_generation_prompt`` appends the assistant turn's opening; extra keyword
        arguments are passed to the template. Encode the result with ``encode`` (the
        template writes the special tokens as text).
        """
        if self.chat_template is None:
            raise ValueError(f"{self.source}: this tokenizer has no chat template")
        context = {"bos_token": self._token(self.bos_token_id),
                   "eos_token": self._token(self.eos_token_id),
                   "pad_token": self._token(self.pad_token_id), **kwargs}
        return _compile(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **context)

    # ---- builders ----------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, bos_token_id: int | None = None,
                  eos_token_id: int | None = None) -> Tokenizer:
        """Load ``tokenizer.json``; special tokens and chat template from the files beside it.

        ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ``pad_token``,
        ``chat_template``) and ``chat_template.jinja`` are read when present; the id arguments
        (e.g. from ``config.json``) are the fallback.
        """
        path = pathlib.Path(path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise WeightsError(f"{path}: cannot read tokenizer ({type(e).__name__}: {e})") from None
        config: dict = {}
        config_path = path.with_name("tokenizer_config.json")
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise WeightsError(f"{config_path}: corrupt tokenizer config (not JSON: {e})"
                                   ) from None

        def token_id(key: str, fallback: int | None) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            found = backend.token_to_id(value) if isinstance(value, str) else None
            return found if found is not None else fallback

        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default", next(iter(named.values()), None))
        jinja = path.with_name("chat_template.jinja")
        if template is None and jinja.is_file():
            template = jinja.read_text()
        return cls(backend, bos_token_id=token_id("bos_token", bos_token_id),
                   eos_token_id=token_id("eos_token", eos_token_id),
                   pad_token_id=token_id("pad_token", None), chat_template=template,
                   source=path)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """The tokenizer in a GGUF file's metadata (reads the header only)."""
        header, _ = read_header(path)
        return cls.from_gguf_metadata(header.metadata, source=path)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], source: Any = "GGUF") -> Tokenizer:
        """Build from GGUF metadata (``tokenizer.ggml.*``, ``tokenizer.chat_template``): a
        ``{key: value}`` dict (``gguf_reader.read_header(path)[0].metadata``) or
        ``gguf.GGUFReader(path).fields``.

        Supports byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``: GPT-2,
        Llama 3, Qwen2, SmolLM2). Control tokens become special added tokens and user-defined
        ones plain added tokens, so both are matched whole in text.
        """

        meta = plain_metadata(metadata)
        get = meta.get
        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise WeightsError(f"{source}: tokenizer.ggml.model={kind!r} is not supported "
                               "(only byte-level BPE, 'gpt2')")
        tokens = get("tokenizer.ggml.tokens")
        merges = get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise WeightsError(f"{source}: GGUF tokenizer metadata lacks tokens or merges")
        types = get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise WeightsError(f"{source}: {len(types)} token types for {len(tokens)} tokens")
        alphabet = set(byte_alphabet().values())
        spell = byte_alphabet()
        vocab: dict[str, int] = {}
        for i, (tok, kind_i) in enumerate(zip(tokens, types, strict=True)):
            if kind_i == NORMAL and not set(tok) <= alphabet:
                tok = "".join(spell[b] for b in tok.encode("utf-8"))
            vocab.setdefault(tok, i)
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise WeightsError(f"{source}: malformed merge {m!r} in tokenizer.ggml.merges")
            pairs.append((left, right))
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        backend.pre_tokenizer = _byte_level_pre_tokenizer(get("tokenizer.ggml.pre"), source)
        backend.decoder = decoders.ByteLevel()
        control = [AddedToken(t, special=True, normalized=False)
                   for t, k in zip(tokens, types, strict=True) if k == CONTROL]
        user = [AddedToken(t, special=False, normalized=False)
                for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED]
        if control:
            backend.add_special_tokens(control)
        if user:
            backend.add_tokens(user)
        bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
        template_parts, specials = ["$A"], []
        if get("tokenizer.ggml.add_bos_token", False) and bos is not None:
            template_parts.insert(0, tokens[bos])
            specials.append((tokens[bos], bos))
        if get("tokenizer.ggml.add_eos_token", False) and eos is not None:
            template_parts.append(tokens[eos])
            specials.append((tokens[eos], eos))
        if specials:
            backend.post_processor = processors.TemplateProcessing(
                single=" ".join(template_parts), special_tokens=sorted(set(specials)))
        return cls(backend, bos_token_id=bos, eos_token_id=eos,
                   pad_token_id=get("tokenizer.ggml.padding_token_id"),
                   chat_template=get("tokenizer.chat_template"), source=source)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    """A jinja2 template in a sandbox, with the helpers Hugging Face chat templates call."""
    import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)

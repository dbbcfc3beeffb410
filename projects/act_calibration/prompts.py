"""Few-shot classification prompts and their label tokens.

A prompt is the dataset's instruction, ``k`` demonstrations (template + answer + label word)
and the test input (template + answer, no word)::

    Classify the sentiment of each sentence.

    Sentence: a gorgeous , witty , seductive movie .
    Sentiment: positive

    Sentence: the acting is amateurish .
    Sentiment:

A class is scored by the log-probability of the first token of ``" " + word`` at the prompt's
last token (the released code scores the label word's token at that position too); the label
tokens of a dataset must differ (:func:`label_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from projects.act_calibration.data import ACTDataError, DatasetSpec, Example


def _clip(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def render(spec: DatasetSpec, example: Example, *, label: bool, max_words: int = 60) -> str:
    """One example in the template; with its label word when ``label``."""
    body = spec.template.format(*(_clip(f, max_words) for f in example.fields))
    out = f"{body}\n{spec.answer}"
    return out + f" {spec.words[example.label]}" if label else out


def build_prompt(spec: DatasetSpec, demos: Sequence[Example], query: Example, *,
                 max_words: int = 60) -> str:
    """The few-shot prompt text (instruction, demonstrations, test input)."""
    parts = [spec.instruction]
    parts += [render(spec, d, label=True, max_words=max_words) for d in demos]
    parts.append(render(spec, query, label=False, max_words=max_words))
    return "\n\n".join(parts)


def sample_demos(pool: Sequence[Example], k: int, seed: int) -> list[Example]:
    """``k`` demonstrations drawn without replacement from ``pool`` with ``seed`` (one draw per
    seed, shared by every test input, as in the released code's few-shot mode)."""
    if k > len(pool):
        raise ACTDataError(f"{k} demonstrations requested from a pool of {len(pool)}")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def label_tokens(tokenizer, spec: DatasetSpec) -> list[int]:
    """The scored token of each class: the first token of ``" " + word``; distinct."""
    ids = [tokenizer.encode(" " + w)[0] for w in spec.words]
    if len(set(ids)) != len(ids):
        raise ACTDataError(f"{spec.name}: label words {spec.words} share a first token "
                           f"({ids}); choose words whose first tokens differ")
    return ids


def encode_prompts(tokenizer, spec: DatasetSpec, demos: Sequence[Example],
                   queries: Sequence[Example], *, max_words: int = 60) -> list[list[int]]:
    """Token ids of every query's prompt (same demonstrations for all)."""
    return [tokenizer.encode(build_prompt(spec, demos, q, max_words=max_words)) for q in queries]

"""The evaluation prompts on SmolLM2 (ChatML), built deterministically from a seed.

* **Judge** (papers/pine.md §13.1, the paper's LM-as-a-judge in small): a question from the
  function-vector ``country-capital`` / ``country-currency`` files in ``$HEADLAB_DATA``
  (``icl_tasks/abstractive``), one correct and one wrong answer (another country's), each a
  segment that carries its own label ("Assistant A" / "Assistant B", drawn at random per item)
  inside the MT-Bench-style judge template. The model is scored on the next token after
  ``[[``: ``A`` against ``B``.
* **Retrieval** (§13.2, lost in the middle in small): k documents "Document (Title: NAME): The
  access code of NAME is DDDD." with distinct first digits; the question names one document;
  the answer is scored on the next token after "The access code of NAME is ": the first digit
  of each document's code.

The paper's data (RewardBench, NaturalQuestions) is not available offline; these sets test the
same mechanics, not the same skills.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from common.data.errors import DataError

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. Choose the assistant whose answer is "
    "correct. Output your final verdict strictly in this format: \"[[A]]\" if assistant A is "
    "better, \"[[B]]\" if assistant B is better.")

JUDGE_TASKS = {
    "country-capital": ("What is the capital of {x}?", "The capital of {x} is {y}."),
    "country-currency": ("What is the currency of {x}?", "The currency of {x} is the {y}."),
}

NAMES = ("Aster", "Birch", "Cedar", "Dahlia", "Elm", "Fern", "Garnet", "Hazel", "Iris", "Juniper",
         "Kestrel", "Linden", "Maple", "Nettle", "Orchid", "Poppy", "Quartz", "Rowan", "Sage",
         "Thistle", "Umber", "Violet", "Willow", "Yarrow", "Zinnia")


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HEADLAB_DATA", "../shared/data"))


def _pairs(task: str) -> list[tuple[str, str]]:
    path = data_dir() / "icl_tasks" / "abstractive" / f"{task}.json"
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (set HEADLAB_DATA to the shared data folder)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"input", "output"} <= set(r):
            raise DataError(f"{path}: record {i} lacks 'input'/'output'")
        out.append((str(r["input"]), str(r["output"])))
    return out


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """``segments[0]`` holds the correct answer, ``segments[1]`` the wrong one; each carries its
    label (``gold_label`` is the correct one's, "A" or "B")."""

    prefix: str
    segments: tuple[str, str]
    suffix: str
    gold_label: str


def _answer_block(label: str, text: str) -> str:
    return (f"[The Start of Assistant {label}'s Answer]\n{text}\n"
            f"[The End of Assistant {label}'s Answer]\n\n")


def judge_items(n: int, seed: int = 0) -> list[JudgeItem]:
    """``n`` items, alternating the tasks, the gold label drawn per item."""
    rng = np.random.default_rng(seed)
    tasks = {t: _pairs(t) for t in JUDGE_TASKS}
    items = []
    for i in range(n):
        task = list(JUDGE_TASKS)[i % len(JUDGE_TASKS)]
        pairs = tasks[task]
        a, b = rng.choice(len(pairs), 2, replace=False)
        while pairs[b][1] == pairs[a][1]:
            b = int(rng.integers(len(pairs)))
        x, y = pairs[a]
        question, answer = JUDGE_TASKS[task]
        gold = "A" if rng.random() < 0.5 else "B"
        other = "B" if gold == "A" else "A"
        right = answer.format(x=x, y=y)
        wrong = answer.format(x=x, y=pairs[b][1])
        prefix = (f"<|im_start|>system\n{JUDGE_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                  f"[User Question]\n{question.format(x=x)}\n\n")
        items.append(JudgeItem(prefix, (_answer_block(gold, right), _answer_block(other, wrong)),
                               "<|im_end|>\n<|im_start|>assistant\n[[", gold))
    return items


@dataclasses.dataclass(frozen=True)
class RetrievalItem:
    """``documents[i]`` has code ``codes[i]``; the question asks for ``documents[gold]``."""

    prefix: str
    documents: tuple[str, ...]
    codes: tuple[str, ...]
    suffix: str
    gold: int


def retrieval_items(k: int, n: int, seed: int = 0) -> list[RetrievalItem]:
    """``n`` items of ``k`` documents (k <= 10: the codes' first digits are distinct)."""
    if not 1 <= k <= 10:
        raise DataError(f"retrieval: k must be in 1..10 (distinct first digits), got {k}")
    rng = np.random.default_rng(1000 * k + seed)
    prefix = ("<|im_start|>system\nAnswer the question using only the documents.<|im_end|>\n"
              "<|im_start|>user\nDocuments:\n")
    items = []
    for _ in range(n):
        names = [NAMES[i] for i in rng.choice(len(NAMES), k, replace=False)]
        firsts = rng.choice(10, k, replace=False)
        codes = [f"{f}{rng.integers(0, 1000):03d}" for f in firsts]
        docs = tuple(f"Document (Title: {nm}): The access code of {nm} is {c}.\n"
                     for nm, c in zip(names, codes, strict=True))
        gold = int(rng.integers(k))
        suffix = (f"\nQuestion: What is the access code of {names[gold]}?<|im_end|>\n"
                  f"<|im_start|>assistant\nThe access code of {names[gold]} is")
        items.append(RetrievalItem(prefix, docs, tuple(codes), suffix, gold))
    return items


def move_gold(item: RetrievalItem, position: int) -> list[int]:
    """An order of the documents with the gold one at ``position`` and the others in their
    original relative order."""
    rest = [i for i in range(len(item.documents)) if i != item.gold]
    return rest[:position] + [item.gold] + rest[position:]

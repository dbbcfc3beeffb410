"""Token-level prompts of a task: zero-shot, k-shot ICL, and the task-embedding prompts.

Every sampler takes a NumPy ``Generator`` (the run's seed). A prompt longer than ``max_tokens``
(the long-input tasks ag_news and commonsense_qa at 10 shots) loses demonstrations from the front
until it fits; how many prompts were cut is returned with them, and the report states it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from projects.soft_injection.data import Pair
from projects.soft_injection.prompts import answer_text, first_target_token, icl_prompt


@dataclasses.dataclass(frozen=True)
class Prompts:
    """``tokens[i]`` the prompt's ids, ``target[i]`` its answer's first token id; ``shots[i]``
    the demonstrations it kept; ``n_cut`` how many lost demonstrations to ``max_tokens``;
    ``answers[i]`` the gold answer text (for exact match)."""

    tokens: tuple[tuple[int, ...], ...]
    target: np.ndarray
    shots: np.ndarray
    n_cut: int = 0
    answers: tuple[str, ...] = ()

    def head(self, n: int) -> Prompts:
        """The first ``n`` prompts."""
        return Prompts(self.tokens[:n], self.target[:n], self.shots[:n], 0, self.answers[:n])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def mean_length(self) -> float:
        return float(np.mean([len(t) for t in self.tokens]))


def _encode(tokenizer, demos: list[Pair], query: Pair, max_tokens: int | None):
    """Token ids and first target token of one prompt; drops front demos beyond ``max_tokens``."""
    demos = list(demos)
    while True:
        text = icl_prompt(demos, query[0])
        ids = tokenizer.encode(text)
        if max_tokens is None or len(ids) <= max_tokens or not demos:
            break
        demos = demos[1:]
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[-max_tokens:]  # a zero-shot query longer than the cap: keep its end
    return tuple(ids), first_target_token(tokenizer, text, answer_text(query[1])), len(demos)


def build(tokenizer, queries: Sequence[Pair], pool: Sequence[Pair], k: int,
          rng: np.random.Generator, *, max_tokens: int | None = None,
          query_idx: Sequence[int] | None = None, shuffle_labels: bool = False) -> Prompts:
    """One prompt per query with ``k`` demonstrations drawn without replacement from ``pool``.

    ``query_idx``: where the queries sit in ``pool`` (task-embedding prompts from train): a
    query's own record is then never one of its demonstrations. ``shuffle_labels``: the
    demonstrations' outputs permuted among them (the corrupted prompts of the function-vector
    paper's indirect effect; the query and its answer unchanged).
    """
    tokens, target, shots, answers = [], [], [], []
    n_cut = 0
    for qi, q in enumerate(queries):
        if k:
            n = len(pool)
            if query_idx is not None:
                idx = rng.choice(n - 1, size=k, replace=False)
                idx = np.where(idx >= query_idx[qi], idx + 1, idx)
            else:
                idx = rng.choice(n, size=k, replace=False)
            demos = [pool[i] for i in idx]
            if shuffle_labels:
                outs = [demos[i][1] for i in rng.permutation(k)]
                demos = [(d[0], o) for d, o in zip(demos, outs, strict=True)]
        else:
            demos = []
        ids, tgt, kept = _encode(tokenizer, demos, q, max_tokens)
        n_cut += kept < k
        tokens.append(ids)
        target.append(tgt)
        shots.append(kept)
        answers.append(answer_text(q[1]))
    return Prompts(tuple(tokens), np.asarray(target, np.int32), np.asarray(shots, np.int32), n_cut,
                   tuple(answers))


def embedding_prompts(tokenizer, train: Sequence[Pair], n_prompts: int, n_shots: int,
                      rng: np.random.Generator, *, max_tokens: int | None = None) -> Prompts:
    """``n_prompts`` prompts of ``n_shots`` demonstrations and a query, all from ``train``
    (``n_shots + 1`` distinct records each), as the official task embedding draws them."""
    train = list(train)
    qidx = rng.integers(0, len(train), n_prompts)
    return build(tokenizer, [train[i] for i in qidx], train, n_shots, rng, max_tokens=max_tokens,
                 query_idx=qidx.tolist())


def concat(parts: Sequence[Prompts]) -> Prompts:
    """The prompts of ``parts`` one after another."""
    return Prompts(tuple(t for p in parts for t in p.tokens),
                   np.concatenate([p.target for p in parts]),
                   np.concatenate([p.shots for p in parts]), sum(p.n_cut for p in parts),
                   tuple(a for p in parts for a in p.answers))

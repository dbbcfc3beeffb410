"""Sink statistics on real inputs: per layer and head, which keys the ACT rule flags, how often
sinks occur beyond the first token, and which kinds of token they are.

Each prompt runs alone (no padding) with every layer's pattern captured; for each (layer,
head) the column scores and sinks follow ``common.attention.act`` (τ = 0.1 by default, without
sparing the first flagged key here, so that the initial sink is counted too). A sink is
*initial* at position 0, else *hidden*; hidden sinks are typed by their token (newline,
punctuation, the answer's delimiter ``:``, other words) and flagged *edge* when fewer than
``1/τ`` queries see them (the formula's end-of-sequence effect, where a token attending to
itself can pass the bar).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from common.attention.act import column_scores, sink_mask
from common.interp import run_with_cache

KINDS = ("newline", "punctuation", "delimiter", "word")
EARLY = 3
"""Hidden sinks at positions ``1 .. EARLY`` are also counted apart (``early``): the tokens right
after the first one often share its role."""
"""Types of hidden sink token (``delimiter``: a token ending in ``:``, the template's
answer and field markers)."""


def token_kind(text: str) -> str:
    """The kind of a token's text (see :data:`KINDS`)."""
    t = text.replace("Ġ", " ").replace("Ċ", "\n")
    if "\n" in t:
        return "newline"
    s = t.strip()
    if s.endswith(":"):
        return "delimiter"
    if s and all(c in string.punctuation for c in s):
        return "punctuation"
    return "word"


@dataclasses.dataclass
class SinkStats:
    """Counts over ``n_prompts`` prompts.

    ``initial [L, H]``: prompts whose first token is a sink; ``hidden [L, H]``: hidden sinks
    (summed over prompts); ``with_hidden [L, H]``: prompts with at least one non-edge hidden
    sink; ``kinds``: hidden non-edge sinks by kind; ``edge``: hidden sinks seen by fewer than
    ``1/τ`` queries; ``examples``: a few prompts' tokens, patterns and sinks for the figure.
    """

    n_prompts: int
    initial: np.ndarray
    hidden: np.ndarray
    with_hidden: np.ndarray
    kinds: dict[str, int]
    edge: int
    early: int
    examples: list[dict]
    top_tokens: dict[str, int]

    def summary(self) -> dict:
        L = self.initial.shape[0]
        n = max(self.n_prompts, 1)
        return {
            "n_prompts": self.n_prompts,
            "initial_sink_rate": round(float(self.initial.mean() / n), 4),
            "hidden_sink_rate": round(float(self.with_hidden.mean() / n), 4),
            "hidden_per_head_prompt": round(float(self.hidden.mean() / n), 4),
            "hidden_sink_rate_by_layer": [round(float(self.with_hidden[i].mean() / n), 4)
                                          for i in range(L)],
            "initial_sink_rate_by_layer": [round(float(self.initial[i].mean() / n), 4)
                                           for i in range(L)],
            "hidden_kinds": {k: int(v) for k, v in self.kinds.items()},
            "edge_sinks": int(self.edge),
            "early_hidden_sinks": int(self.early),
            "hidden_sinks_total": int(sum(self.kinds.values())),
            "top_hidden_tokens": dict(sorted(self.top_tokens.items(),
                                             key=lambda kv: -kv[1])[:12]),
        }


def sink_stats(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, threshold: float = 0.1,
               n_examples: int = 2, progress: Callable | None = None) -> SinkStats:
    """Sink statistics of ``model`` on ``prompt_ids`` (see module docstring)."""
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    initial = np.zeros((L, H), np.int64)
    hidden = np.zeros((L, H), np.int64)
    with_hidden = np.zeros((L, H), np.int64)
    kinds = dict.fromkeys(KINDS, 0)
    tops: dict[str, int] = {}
    edge = early = 0
    examples = []
    min_seen = int(np.ceil(1.0 / threshold))
    for ids in (progress or (lambda x: x))(list(prompt_ids)):
        ids = list(ids)
        N = len(ids)
        _, cache = run_with_cache(model, jnp.asarray([ids], jnp.int32), names_filter="pattern")
        pat = jnp.stack([cache["pattern", layer][0] for layer in range(L)])  # [L, H, N, N]
        sinks = np.asarray(sink_mask(column_scores(pat), threshold, spare_first=False))
        toks = [tokenizer.id_to_token(int(i)) for i in ids]
        seen = N - np.arange(N)  # queries that see key j
        initial += sinks[:, :, 0]
        hid = sinks[:, :, 1:]
        hidden += hid.sum(-1)
        core = hid & (seen[1:] >= min_seen)
        with_hidden += core.any(-1)
        edge += int((hid & (seen[1:] < min_seen)).sum())
        early += int(core[:, :, :EARLY].sum())
        for j in np.flatnonzero(core.any((0, 1))):
            count = int(core[:, :, j].sum())
            kinds[token_kind(toks[j + 1])] += count
            key = repr(toks[j + 1].replace("Ġ", " ").replace("Ċ", "\n"))
            tops[key] = tops.get(key, 0) + count
        if len(examples) < n_examples:
            examples.append({"tokens": toks, "pattern": np.asarray(pat), "sinks": sinks})
    return SinkStats(len(prompt_ids), initial, hidden, with_hidden, kinds, edge, early, examples,
                     tops)

"""What one head does on natural text (paper §4, in small): where the head's direct effect
promotes a token, is that token the successor of the token the head attends to (succession),
that token itself (copying), or something else?

For every position of every text: the head's output ``z_h W_O[h]`` through the final norm
(scale frozen at the run) onto the whole vocabulary gives the token it promotes most; the
key position with the largest attention weight gives its source token. Positions where the
head attends mostly to the first token (the attention sink: no information moved) are left out;
of the rest, those where the head's direct effect is among the strongest ``top_frac`` are
classified:

* ``succession``: (source, promoted) is an (item, successor) pair of any ordinal class, spaced
  or bare (``" Monday" -> " Tuesday"``, ``"3" -> "4"``);
* ``acronym``: the promoted token is one capital letter, the initial of the attended word
  (``" Bureau" -> "B"``: the next letter of an acronym being spelled), the paper's second
  behaviour of its successor head on the Pile;
* ``greater_than``: both are whole numbers and the promoted one is larger (not the successor),
  the paper's third;
* ``copy``: promoted and source spell the same word (case and leading space ignored);
* ``other``.

Texts come from the AG News test file in ``$HEADLAB_DATA/classification/agnews`` (titles and
descriptions, real news text with numbers, dates and acronyms).
"""

from __future__ import annotations

import csv
import os
import pathlib

import jax.numpy as jnp
import numpy as np

from common.interp import W_O, W_U, final_norm_linear, run_with_cache
from projects.successor_heads.tasks import CLASSES, build_classes


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HEADLAB_DATA", "../shared/data"))


def agnews_texts(n: int, path: pathlib.Path | None = None) -> list[str]:
    """The first ``n`` AG News test texts (title + description)."""
    path = path or data_dir() / "classification" / "agnews" / "test_first2000.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AG News test file not found (set HEADLAB_DATA to the "
                                "shared data folder)")
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append(f"{row['Title']}. {row['Description']}".replace("\\", " "))
            if len(out) == n:
                break
    return out


def successor_pairs(tokenizer) -> set[tuple[int, int]]:
    """Every (item, successor) token pair of every ordinal class, spaced and bare."""
    classes, _ = build_classes(tokenizer, tuple(CLASSES), bare=tuple(CLASSES), held_out=())
    return {(c.token_ids[i], c.token_ids[j]) for c in classes for i, j in c.pairs}


KINDS = ("succession", "acronym", "greater_than", "copy", "other")


def behaviour_kind(source: str, promoted: str, successor: bool) -> str:
    """The kind (module docstring) of one (attended token, promoted token) pair, from their
    decoded text; ``successor``: the pair is an (item, successor) pair of an ordinal class."""
    src, out = source.strip(), promoted.strip()
    if successor:
        return "succession"
    if len(out) == 1 and out.isupper() and len(src) >= 2 and src[0].upper() == out:
        return "acronym"
    if src.isdigit() and out.isdigit() and int(out) > int(src):
        return "greater_than"
    if out and out.lower() == src.lower():
        return "copy"
    return "other"


def head_behaviour(model, tokenizer, texts: list[str], layer: int, head: int, *,
                   seq: int = 48, top_frac: float = 0.1, batch: int = 16,
                   n_examples: int = 8) -> dict:
    """Classify the head's strongest direct effects on ``texts`` (module docstring).

    Texts shorter than ``seq`` tokens are skipped; longer ones are cut to ``seq``.
    """
    ids = [t[:seq] for t in (tokenizer.encode(x) for x in texts) if len(t) >= seq]
    if not ids:
        raise ValueError(f"head_behaviour: no text has {seq} tokens")
    ids = np.asarray(ids, np.int32)
    cfg = model.config
    wo = W_O(model).values[layer, head]  # [k, d]
    wu = W_U(model).values
    promoted, strength, source, nxt, sink = [], [], [], [], []
    for s in range(0, len(ids), batch):
        x = jnp.asarray(ids[s:s + batch])
        _, cache = run_with_cache(model, x, names_filter=("z", "pattern", "resid_post"),
                                  layers=sorted({layer, cfg.n_layers - 1}))
        out = cache["z", layer][:, :, head] @ wo  # [b, s, d]
        contrib = final_norm_linear(model, out, cache["resid_post", cfg.n_layers - 1])
        lg = np.asarray(contrib @ wu)  # [b, s, vocab]
        promoted.append(lg.argmax(-1))
        strength.append(lg.max(-1))
        pat = np.asarray(cache["pattern", layer])[:, head]  # [b, q, k]
        src = pat.argmax(-1)
        sink.append(pat[..., 0] >= 0.5)
        source.append(np.take_along_axis(np.asarray(x), src, axis=1))
        nxt.append(np.concatenate([np.asarray(x)[:, 1:], np.full((len(x), 1), -1)], 1))
    promoted, strength = np.concatenate(promoted), np.concatenate(strength)
    source, nxt, sink = np.concatenate(source), np.concatenate(nxt), np.concatenate(sink)
    promoted[:, 0] = -1  # the first position attends only to itself
    moving = (promoted >= 0) & ~sink
    if not moving.any():
        raise ValueError(f"head_behaviour: L{layer}H{head} attends to the first token everywhere")
    cut = np.quantile(strength[moving], 1 - top_frac)
    sel = (strength >= cut) & moving
    pairs = successor_pairs(tokenizer)
    kinds = dict.fromkeys(KINDS, 0)
    examples = {k: [] for k in KINDS}
    for b, q in zip(*np.nonzero(sel), strict=True):
        p, src = int(promoted[b, q]), int(source[b, q])
        k = behaviour_kind(tokenizer.decode([src]), tokenizer.decode([p]), (src, p) in pairs)
        kinds[k] += 1
        if len(examples[k]) < n_examples:
            ctx = tokenizer.decode(ids[b, max(0, q - 8):q + 1])
            examples[k].append({"context": ctx, "attends_to": tokenizer.decode([src]),
                                "promotes": tokenizer.decode([p]),
                                "next_token": tokenizer.decode([int(nxt[b, q])])
                                if nxt[b, q] >= 0 else ""})
    n = int(sel.sum())
    return {"layer": layer, "head": head, "texts": int(len(ids)), "positions": int(ids.size),
            "attending_away_from_first_token": int(moving.sum()),
            "selected": n, "top_frac": top_frac,
            "shares": {k: v / max(n, 1) for k, v in kinds.items()}, "counts": kinds,
            "promotes_next_token": float(np.mean(promoted[sel] == nxt[sel])) if n else 0.0,
            "examples": examples}

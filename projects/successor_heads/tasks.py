"""Ordinal token classes built through the model's own tokenizer (spec §2).

An ordinal class is an ordered list of items (``Monday, Tuesday, ...``); the succession task asks
that item ``t_i`` map to ``t_{i+1}`` (and, for cyclic classes, the last to the first). Each item
is spelled with a leading space (``" Monday"``, the paper's convention) or bare (``"5"``, the
variant the later derivative adds for tokenizers that split numbers); only items that are one
token are kept, and every dropped item is recorded with its reason, e.g.
``" Tue" -> 2 tokens [' T', 'ue']``. A pair is kept when both its items are kept.

    classes, dropped = build_classes(tok, ("days", "months"), bare=("numbers",))
    classes[0].token_ids, classes[0].pairs          # [n] ids, [(i, j), ...] item indices
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
ORDINAL_WORDS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
ROMAN = ("I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX XX").split()

# name -> (items, cyclic). "numbers" is 0..200 (the derivative's 1..200 plus 0, so that a
# tokenizer with single digits only still has the pair 0 -> 1). The paper's eight tasks call
# the ordinal words "cardinal_words"; headlab names them for what they are.
CLASSES: dict[str, tuple[tuple[str, ...], bool]] = {
    "numbers": (tuple(str(i) for i in range(201)), False),
    "number_words": (tuple(NUMBER_WORDS), False),
    "ordinal_words": (tuple(ORDINAL_WORDS), False),
    "days": (tuple(DAYS), True),
    "day_prefixes": (tuple(d[:3] for d in DAYS), True),
    "months": (tuple(MONTHS), True),
    "month_prefixes": (tuple(m[:3] for m in MONTHS), True),
    "letters": (tuple(LETTERS), False),
    "roman_numerals": (tuple(ROMAN), False),
}
DEFAULT_CLASSES = tuple(CLASSES)
HELD_OUT = ("roman_numerals",)  # paper §3.1: an out-of-distribution test, scored apart


class ClassError(ValueError):
    """An ordinal class that cannot be scored (unknown name, fewer than two usable items)."""


@dataclasses.dataclass(frozen=True)
class OrdinalClass:
    """One scored class: its kept items, their token ids and the succession pairs.

    Attributes:
      name: e.g. ``"days"`` or ``"numbers/bare"`` (the no-space variant).
      items: the kept items as spelled (``" Monday"``), ``[n]``.
      token_ids: their token ids, ``[n]`` (distinct).
      pairs: ``(i, j)`` item indices with ``items[j]`` the successor of ``items[i]``.
      cyclic: the last item's successor is the first.
      held_out: scored, but kept out of the pooled score (Roman numerals, paper §3.1).
      dropped: ``(item, reason)`` of every item left out.
      dropped_pairs: how many of the full class's pairs were lost with those items.
    """

    name: str
    items: tuple[str, ...]
    token_ids: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    cyclic: bool = False
    held_out: bool = False
    dropped: tuple[tuple[str, str], ...] = ()
    dropped_pairs: int = 0

    def __post_init__(self):
        if len(self.items) != len(self.token_ids):
            raise ClassError(f"class {self.name!r}: {len(self.items)} items but "
                             f"{len(self.token_ids)} token ids")
        if len(self.token_ids) < 2:
            raise ClassError(f"class {self.name!r} has {len(self.token_ids)} single-token "
                             "item(s); a succession class needs at least two")
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ClassError(f"class {self.name!r}: repeated token ids {self.token_ids}")
        if not self.pairs:
            raise ClassError(f"class {self.name!r}: no (item, successor) pair has both items "
                             "as single tokens")
        n = len(self.items)
        for i, j in self.pairs:
            if not (0 <= i < n and 0 <= j < n) or i == j:
                raise ClassError(f"class {self.name!r}: bad pair {(i, j)} for {n} items")

    @property
    def chance(self) -> float:
        """Probability that a uniformly random candidate is the successor: ``1 / n``."""
        return 1.0 / len(self.token_ids)


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def make_class(tokenizer: Any, name: str, items: Sequence[str], *, cyclic: bool = False,
               prefix: str = " ", held_out: bool = False) -> OrdinalClass:
    """Tokenize ``prefix + item`` for each item; keep single tokens; pair consecutive items.

    Raises:
      ClassError: fewer than two single-token items, or no pair with both items kept.
    """
    kept: list[tuple[int, str, int]] = []  # (position in the full list, text, id)
    dropped: list[tuple[str, str]] = []
    seen: dict[int, str] = {}
    for pos, item in enumerate(items):
        text = prefix + item
        ids = list(tokenizer.encode(text))
        if len(ids) != 1:
            dropped.append((text, f"{len(ids)} tokens {_pieces(tokenizer, ids)}"))
        elif ids[0] in seen:
            dropped.append((text, f"same token as {seen[ids[0]]!r}"))
        else:
            seen[ids[0]] = text
            kept.append((pos, text, ids[0]))
    n_full = len(items)
    full_pairs = [(p, p + 1) for p in range(n_full - 1)] + ([(n_full - 1, 0)] if cyclic else [])
    index = {pos: k for k, (pos, _, _) in enumerate(kept)}
    pairs = tuple((index[a], index[b]) for a, b in full_pairs if a in index and b in index)
    return OrdinalClass(name=name, items=tuple(t for _, t, _ in kept),
                        token_ids=tuple(i for _, _, i in kept), pairs=pairs, cyclic=cyclic,
                        held_out=held_out, dropped=tuple(dropped),
                        dropped_pairs=len(full_pairs) - len(pairs))


@dataclasses.dataclass(frozen=True)
class DroppedClass:
    """A requested class that could not be scored, and why."""

    name: str
    reason: str
    dropped: tuple[tuple[str, str], ...] = ()


def build_classes(tokenizer: Any, names: Iterable[str] = DEFAULT_CLASSES, *,
                  bare: Iterable[str] = ("numbers",), held_out: Iterable[str] = HELD_OUT
                  ) -> tuple[list[OrdinalClass], list[DroppedClass]]:
    """The ordinal classes ``names`` for this tokenizer, with a leading space; the classes in
    ``bare`` also without it (as ``"<name>/bare"``). A class left with fewer than two
    single-token items (or no pair) is dropped with its reason: the documented fallback of the
    run (``make_class`` raises instead).

    Raises:
      ClassError: an unknown class name, or no class left at all.
    """
    names, bare, held_out = tuple(names), set(bare), set(held_out)
    unknown = [n for n in (*names, *bare) if n not in CLASSES]
    if unknown:
        raise ClassError(f"unknown ordinal class(es) {unknown}; known: {list(CLASSES)}")
    out: list[OrdinalClass] = []
    gone: list[DroppedClass] = []
    for name in names:
        items, cyclic = CLASSES[name]
        for prefix, label in ((" ", name), ("", f"{name}/bare")):
            if prefix == "" and name not in bare:
                continue
            try:
                out.append(make_class(tokenizer, label, items, cyclic=cyclic, prefix=prefix,
                                      held_out=name in held_out))
            except ClassError as e:
                lost = []
                for item in items:
                    ids = list(tokenizer.encode(prefix + item))
                    if len(ids) != 1:
                        lost.append((prefix + item, f"{len(ids)} tokens"))
                gone.append(DroppedClass(label, str(e), tuple(lost)))
    if not out:
        raise ClassError(f"no ordinal class has two single-token items with this tokenizer "
                         f"(tried {[d.name for d in gone]})")
    return out, gone


def describe(classes: Sequence[OrdinalClass], gone: Sequence[DroppedClass],
             max_items: int = 6) -> dict:
    """JSON-able account for summary.json: per class the kept count, pairs, chance and the
    dropped items (the first ``max_items`` spelled out, then a count)."""
    def items(d):
        shown = [f"{t!r}: {r}" for t, r in d[:max_items]]
        return shown + ([f"... and {len(d) - max_items} more"] if len(d) > max_items else [])

    return {
        "classes": {c.name: {"kept": len(c.items), "pairs": len(c.pairs),
                             "dropped_items": len(c.dropped), "dropped_pairs": c.dropped_pairs,
                             "chance": c.chance, "cyclic": c.cyclic, "held_out": c.held_out,
                             "items": list(c.items), "dropped": items(c.dropped)}
                    for c in classes},
        "dropped_classes": {d.name: {"reason": d.reason, "dropped": items(d.dropped)}
                            for d in gone},
    }

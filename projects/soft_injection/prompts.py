"""Prompts as the official code writes them (spec §2), and their first answer token.

Demonstration ``"Q: {input}\\nA: {output}\\n\\n"``, query ``"Q: {input}\\nA:"``. A space precedes
every input and output, except that an output made only of digits gets none (``"A:5"``: the
official fix, so that the token after ``":"`` is not a lone space). The query pair goes through
that digit rule on *both* keys, so an all-digit query input is written ``"Q:5\\nA:"`` while a
demonstration's never is: an inconsistency of the official code, kept for fidelity.

Exact match (the paper's metric, :func:`exact_match`) compares a greedy continuation with the
answer after the official normalisation (:func:`normalise`).
"""

from __future__ import annotations

from collections.abc import Sequence

from projects.soft_injection.data import Pair


def _spaced(text: str) -> str:
    """``" " + text`` unless ``text`` is all digits."""
    return text if text.isdigit() else " " + text


def format_demo(inp: str, out: str) -> str:
    """One demonstration: the input always gets its space, the output by the digit rule."""
    return f"Q: {inp}\nA:{_spaced(out)}\n\n"


def format_query(inp: str) -> str:
    """The query, its input by the digit rule (the official quirk)."""
    return f"Q:{_spaced(inp)}\nA:"


def icl_prompt(demos: Sequence[Pair], query: str) -> str:
    """``k`` demonstrations then the query (``k = 0``: the zero-shot prompt)."""
    return "".join(format_demo(i, o) for i, o in demos) + format_query(query)


def answer_text(out: str) -> str:
    """The target as it continues the prompt (the digit rule)."""
    return _spaced(out)


def first_target_token(tokenizer, prompt: str, answer: str) -> int:
    """``tok(prompt + answer)[len(tok(prompt))]``: the answer's first token in context."""
    src = tokenizer.encode(prompt)
    full = tokenizer.encode(prompt + answer)
    if len(full) <= len(src):
        raise ValueError(f"first_target_token: the answer {answer!r} adds no token to the prompt")
    return int(full[len(src)])


def case_sensitive(task: str) -> bool:
    """The official code keeps case only for tasks named ``*capitalize*`` or ``*lowercase*``
    (so ``next_capital_letter`` is compared in lower case)."""
    t = task.lower()
    return "capitalize" in t or "lowercase" in t


def normalise(text: str, task: str, *, generated: bool) -> str:
    """The official normalisation: ``"St."`` becomes ``"Saint"`` (country-currency's
    inconsistent abbreviations), a continuation (``generated``) is cut at its first newline,
    both are cut at the first ``"("`` and stripped, and lower-cased unless
    :func:`case_sensitive`."""
    text = text.strip().replace("St.", "Saint")
    if generated:
        text = text.split("\n")[0]
    text = text.split("(")[0].strip()
    return text if case_sensitive(task) else text.lower()


def exact_match(continuation: str, answer: str, task: str) -> bool:
    """Whether the normalised continuation starts with the normalised answer (the official
    prefix match ``pred[:len(target)] == target``; an answer that normalises to ``""``
    matches anything, as there)."""
    target = normalise(answer, task, generated=False)
    pred = normalise(continuation, task, generated=True)
    return pred[:len(target)] == target

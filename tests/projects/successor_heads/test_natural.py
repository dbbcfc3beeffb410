"""The behaviour categories of a head's strongest direct effects on natural text (paper §4)."""

from __future__ import annotations

import pytest

from projects.successor_heads.natural import KINDS, behaviour_kind


@pytest.mark.parametrize("source, promoted, successor, kind", [
    (" Monday", " Tuesday", True, "succession"),
    ("3", "4", True, "succession"),
    (" Bureau", "B", False, "acronym"),  # "Federal Bureau of Investigation (FB" -> "I" ...
    (" Investigation", " I", False, "acronym"),
    (" bureau", "B", False, "acronym"),  # the initial, whatever the word's case
    (" Bureau", "b", False, "other"),  # a lower-case letter spells no acronym
    (" B", "B", False, "copy"),  # a one-letter word is a copy, not an initial
    ("17", "42", False, "greater_than"),
    ("42", "17", False, "other"),
    ("42", "42", False, "copy"),
    (" Apple", " apple", False, "copy"),
    (" Apple", " pear", False, "other"),
    (" ", " ", False, "other"),
])
def test_behaviour_kind(source, promoted, successor, kind):
    assert behaviour_kind(source, promoted, successor) == kind
    assert kind in KINDS

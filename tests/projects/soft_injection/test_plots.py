"""Figure labels of the soft_injection project."""

from __future__ import annotations

from projects.soft_injection.plots import _short


def test_short_labels_keep_the_tasks_apart():
    """Shortened task names keep their ends, so tasks that differ only there stay distinct."""
    names = ["alphabetically_first_3", "alphabetically_first_5", "alphabetically_last_3",
             "capitalize_first_letter", "capitalize_last_letter", "capitalize_second_letter",
             "lowercase_first_letter", "lowercase_last_letter", "antonym"]
    short = [_short(n, 18) for n in names]
    assert len(set(short)) == len(names)
    assert all(len(s) <= 18 for s in short)
    assert short[-1] == "antonym" and short[0].endswith("first_3") and "…" in short[0]

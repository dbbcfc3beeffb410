"""common.plotting: each layout defect is found on a planted figure; a clean figure has none."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from common.plotting import LayoutWarning, layout_problems, save


def clean():
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([1, 2, 3], [3, 2, 1], "o-", label="a")
    ax.set(xlabel="L", ylabel="MSE", title="clean")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig, ax


def test_a_clean_figure_has_no_problems(tmp_path):
    fig, _ = clean()
    assert layout_problems(fig) == []
    assert save(fig, tmp_path, "clean") == ["clean.png", "clean.pdf"]
    assert (tmp_path / "clean.png").stat().st_size > 0


def test_overlapping_texts_and_crowded_ticks():
    fig, ax = clean()
    ax.text(1.5, 2.5, "first note", fontsize=12)
    ax.text(1.5, 2.5, "second note", fontsize=12)
    assert "text 'first note' overlaps text 'second note'" in layout_problems(fig)
    fig2, ax2 = plt.subplots(figsize=(2, 2))
    ax2.bar(np.arange(12), np.ones(12))
    ax2.set_xticks(np.arange(12), [f"label{i}" for i in range(12)])
    ax2.set(xlabel="x", ylabel="y")
    assert any("overlaps text 'label" in p for p in layout_problems(fig2))


def test_text_off_the_canvas():
    fig, ax = clean()
    ax.text(1.0, 2.0, "far away", transform=ax.transAxes)
    assert "text 'far away' leaves the canvas" in layout_problems(fig)


def test_an_axis_without_label():
    fig, ax = clean()
    ax.set_ylabel("")
    assert "'clean': the y axis has tick labels but no label" in layout_problems(fig)
    ax.set_ylabel("MSE")
    ax.set_yticks([])  # no tick labels: no label needed
    ax.set_ylabel("")
    assert layout_problems(fig) == []


def test_a_legend_over_the_data():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [1.0, 0.5, 0.0], "o-", label="falls")
    ax.plot([0, 2], [0.98, 0.98], "s", label="top")
    ax.set(xlabel="x", ylabel="y")
    ax.legend(loc="upper left")
    fig.tight_layout()
    assert any("legend covers" in p for p in layout_problems(fig))


def test_save_warns_with_the_problems(tmp_path):
    fig, ax = clean()
    ax.set_xlabel("")
    with pytest.warns(LayoutWarning, match="figure bad: 'clean': the x axis has tick labels"):
        save(fig, tmp_path, "bad")

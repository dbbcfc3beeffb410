"""common.progress: stage lines with their times, failures reported, quiet mode."""

from __future__ import annotations

import io

import pytest

from common.progress import bar, format_seconds, stage


def test_stage_prints_start_and_duration():
    out = io.StringIO()
    with stage("evaluate", "19 prompt lengths", prefix="icl", stream=out):
        pass
    start, end = out.getvalue().splitlines()
    assert start == "[icl] evaluate: 19 prompt lengths ..."
    assert end.startswith("[icl] evaluate done in ") and end.endswith(" s")


def test_a_failing_stage_says_so_and_reraises():
    out = io.StringIO()
    with pytest.raises(KeyError), stage("theory", stream=out):
        raise KeyError("x")
    assert out.getvalue().splitlines()[-1].startswith("theory failed after ")


def test_quiet_and_disabled_print_nothing(monkeypatch, capsys):
    out = io.StringIO()
    with stage("a", stream=out, enabled=False):
        pass
    monkeypatch.setenv("HEADLAB_QUIET", "1")
    with stage("b", stream=out):
        pass
    assert out.getvalue() == ""
    assert list(bar(range(3), "x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("seconds,text", [(4.24, "4.2 s"), (96.4, "1 min 36 s"),
                                          (3725, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_laps_time_consecutive_stages(monkeypatch):
    from common import progress

    clock = iter([100.0, 102.5, 110.0, 111.25])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    lap = progress.Laps()
    lap("data")
    lap("train")
    assert lap.timings == {"data": 2.5, "train": 7.5}
    assert lap.total() == 11.2  # round(11.25, 1)

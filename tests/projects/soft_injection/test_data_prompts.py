"""Task files, splits and prompts of the soft_injection project (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.cli import user_errors
from projects.soft_injection import data, episodes, prompts
from tests.projects.soft_injection.fixtures import CharTokenizer, write_task, write_tasks


def test_split_sizes_match_the_official_splits():
    # spec §7 table: country-capital 197 -> 137/18/42, next_item 225 -> 157/21/47,
    # antonym 2398 -> 1678/216/504, the 1000-row extractive tasks 700/90/210
    assert data.split_sizes(197) == (137, 18, 42)
    assert data.split_sizes(225) == (157, 21, 47)
    assert data.split_sizes(2398) == (1678, 216, 504)
    assert data.split_sizes(1000) == (700, 90, 210)


def test_splits_are_disjoint_fixed_by_seed_and_cover_the_file(tmp_path):
    write_tasks(tmp_path)
    a = data.load_task("first_letter", split_seed=32, root=tmp_path)
    b = data.load_task("first_letter", split_seed=32, root=tmp_path)
    c = data.load_task("first_letter", split_seed=7, root=tmp_path)
    assert a == b and a.train != c.train
    assert sorted(a.train + a.valid + a.test) == sorted(data.load_pairs(a.path))
    assert (len(a.train), len(a.valid), len(a.test)) == data.split_sizes(30)
    assert data.load_task("word_len", root=tmp_path).kind == "extractive"


@pytest.mark.parametrize("records, match", [
    ([{"input": "a"}], "record 0 has no 'output' field"),
    ([{"input": "a", "output": "b"}, {"output": "c"}], "record 1 has no 'input' field"),
    ([], "holds no records"),
    ({"input": "a"}, "expected a JSON array"),
    ([{"input": "a", "output": "b"}] * 3, "give an empty split"),
    (["a b"], "record 0 is str"),
])
def test_bad_task_files_raise_one_clear_error_naming_the_file(tmp_path, records, match):
    path = write_task(tmp_path, "bad", records)
    with pytest.raises(data.TaskDataError, match=match) as e:
        data.load_task("bad", root=tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, user_errors())  # the CLI prints it as one line


def test_missing_and_unreadable_task_files(tmp_path):
    write_tasks(tmp_path)
    with pytest.raises(data.TaskDataError, match="no such task file.*first_letter"):
        data.load_task("nope", root=tmp_path)
    p = tmp_path / "icl_tasks" / "abstractive" / "broken.json"
    p.write_text('[{"input": "a", ')
    with pytest.raises(data.TaskDataError, match="broken.json: not a readable JSON"):
        data.load_task("broken", root=tmp_path)
    write_task(tmp_path, "tiny", [{"input": str(i), "output": "x"} for i in range(8)])
    with pytest.raises(data.TaskDataError, match="train split has 5 records, the run needs 11"):
        data.load_task("tiny", root=tmp_path, min_train=11)


def test_prompt_template_and_the_digit_rule():
    # demonstration inputs always get the space; outputs not when all digits
    assert prompts.format_demo("along", "5") == "Q: along\nA:5\n\n"
    assert prompts.format_demo("zero", "one") == "Q: zero\nA: one\n\n"
    # the query input goes through the digit rule (the official quirk)
    assert prompts.format_query("5") == "Q:5\nA:"
    assert prompts.format_query("five") == "Q: five\nA:"
    assert prompts.icl_prompt([("1", "2"), ("a", "b")], "7") == (
        "Q: 1\nA:2\n\nQ: a\nA: b\n\nQ:7\nA:")
    tok = CharTokenizer()
    # first target token in context: the space for a word, the digit for a number
    assert prompts.first_target_token(tok, "Q: a\nA:", prompts.answer_text("bee")) == ord(" ")
    assert prompts.first_target_token(tok, "Q: a\nA:", prompts.answer_text("42")) == ord("4")


def test_episodes_draw_distinct_demos_and_never_the_query(tmp_path):
    tok = CharTokenizer()
    train = [(f"w{i}", f"o{i}") for i in range(12)]
    ep = episodes.embedding_prompts(tok, train, 20, 11, np.random.default_rng(0))
    for ids in ep.tokens:  # 11 demos + the query: all 12 records, each once
        text = tok.decode(ids)
        assert [text.count(f"Q: w{i}\n") for i in range(12)] == [1] * 12
        assert text.endswith("\nA:") and text.count("A:") == 12
    assert (ep.shots == 11).all() and ep.n_cut == 0
    cut = episodes.build(tok, train[:2], train, 10, np.random.default_rng(1), max_tokens=40)
    assert max(len(t) for t in cut.tokens) <= 40 and cut.n_cut == 2
    assert (cut.shots < 10).all()
    json.dumps(ep.target.tolist())


def test_all_config_takes_every_valid_shipped_task_and_leaves_out_bad_ones(tmp_path,
                                                                          monkeypatch):
    from projects.soft_injection.configs.default import get_config, load_tasks, validate

    c = get_config("all")
    quick = get_config("quick")
    assert c.tasks == () and tuple(c.seeds) == (0,)
    for k in ("steps", "test_items", "n_prompts", "val_items", "val_every"):
        assert c[k] == quick[k], k
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path))
    names = write_tasks(tmp_path)
    write_task(tmp_path, "broken", [{"input": "a"}] * 20)
    c.shots, c.n_shots = (1, 3), 3
    skipped: list[str] = []
    validate(c)  # a bad shipped file does not stop the 'all' run
    got = load_tasks(c, skipped)
    assert [t.name for t in got] == sorted(names) and len(skipped) == 1
    assert "broken.json: record 0 has no 'output'" in skipped[0]
    c.skip_invalid_tasks = False
    with pytest.raises(data.TaskDataError, match="broken.json"):
        load_tasks(c)

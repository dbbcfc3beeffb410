"""Reading the shipped classification sets and their prompts; bad records and bad settings
raise one clear error naming the file, line and fault."""

from __future__ import annotations

import json
import shutil

import pytest

from common.cli import user_errors
from common.configs import ConfigError
from projects.act_calibration import data, prompts
from projects.act_calibration.configs.default import get_config, layer_range, validate
from tests.projects.act_calibration.tiny import WordTokenizer

SIZES = {"sst2": 872, "sst5": 1101, "mr": 1066, "subj": 2000, "trec": 500, "agnews": 2000,
         "cb": 56, "boolq": 1000}  # ../shared/data/SOURCES.md


@pytest.mark.parametrize("name", data.DATASETS)
def test_shipped_files_read_whole(name):
    spec = data.SPECS[name]
    ex = data.read_file(spec, data.data_root() / spec.eval_file)
    assert len(ex) == SIZES[name]
    assert {e.label for e in ex} == set(range(len(spec.names)))
    assert all(e.fields and all(f.strip() for f in e.fields) for e in ex)


def test_known_records():
    trec = data.read_file(data.SPECS["trec"], data.data_root() / "trec/test.txt")
    assert trec[0].fields == ("How far is it from Denver to Aspen ?",)
    assert data.SPECS["trec"].names[trec[0].label] == "NUM"
    assert data.SPECS["trec"].words[trec[0].label] == "Number"
    ag = data.read_file(data.SPECS["agnews"], data.data_root() / "agnews/test_first2000.csv")
    assert ag[0].fields[0].startswith("Fears for T N pension after talks. Unions")
    assert data.SPECS["agnews"].names[ag[0].label] == "Business"  # class index 3
    cb = data.read_file(data.SPECS["cb"], data.data_root() / "cb/val.jsonl")
    assert data.SPECS["cb"].names[cb[0].label] == "contradiction"


def test_splits_are_disjoint():
    sp = data.split("sst2", n_demo_pool=20, n_calib=10, n_test=50)
    keys = [{e.fields for e in part} for part in (sp.demos, sp.calib, sp.test)]
    assert len(sp.demos) == 20 and len(sp.calib) == 10 and len(sp.test) == 50
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    cb = data.split("cb", n_demo_pool=20, n_calib=10, n_test=500)
    assert len(cb.test) == 56  # all of CB validation; demos and calib from train


SHIPPED = data.data_root()


def _copy(tmp_path, name):
    src = SHIPPED / name
    dst = tmp_path / "classification" / name
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_label_and_unknown_class(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path))
    d = _copy(tmp_path, "cb")
    lines = (d / "val.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec.pop("label")
    (d / "val.jsonl").write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]))
    with pytest.raises(data.ACTDataError, match=r"val.jsonl:3: missing label"):
        data.split("cb", n_demo_pool=4, n_calib=4, n_test=10)
    rec["label"] = "maybe"
    (d / "val.jsonl").write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]))
    with pytest.raises(data.ACTDataError, match=r"val.jsonl:3: unknown class 'maybe'"):
        data.split("cb", n_demo_pool=4, n_calib=4, n_test=10)
    d = _copy(tmp_path, "sst2")
    text = (d / "stsa.binary.dev.txt").read_text().splitlines()
    (d / "stsa.binary.dev.txt").write_text("\n".join(text[:4] + ["7 a sentence"] + text[5:]))
    with pytest.raises(data.ACTDataError, match=r"stsa.binary.dev.txt:5: unknown class '7'"):
        data.split("sst2", n_demo_pool=4, n_calib=4, n_test=10)
    d = _copy(tmp_path, "trec")
    text = (d / "test.txt").read_text().splitlines()
    (d / "test.txt").write_text("\n".join(["What is it ?"] + text[1:]))
    with pytest.raises(data.ACTDataError, match=r"test.txt:1: missing label"):
        data.split("trec", n_demo_pool=4, n_calib=4, n_test=10)
    assert issubclass(data.ACTDataError, user_errors())  # headlab prints one line


def test_prompt_and_label_tokens():
    spec = data.SPECS["sst2"]
    demo = data.Example(("a fine film .",), 1)
    q = data.Example(("a dull film .",), 0)
    text = prompts.build_prompt(spec, [demo], q)
    assert text == ("Classify the sentiment of each sentence.\n\nSentence: a fine film .\n"
                    "Sentiment: positive\n\nSentence: a dull film .\nSentiment:")
    tok = WordTokenizer([" negative", " positive"])
    assert prompts.label_tokens(tok, spec) == [1, 2]
    same = WordTokenizer()
    same.encode = lambda text: [7]  # every word the same token
    with pytest.raises(data.ACTDataError, match="share a first token"):
        prompts.label_tokens(same, spec)


def test_config_errors():
    c = get_config("quick")
    validate(c)
    assert layer_range(c, 30) == tuple(range(2, 29))
    for field, value, match in (("datasets", ("sst2", "imdb"), "unknown dataset"),
                                ("criterion", "median", "criterion"),
                                ("beta", 1.5, "beta"), ("layers", (2, 40), "layers")):
        bad = get_config("quick")
        setattr(bad, field, value)
        with pytest.raises(ConfigError, match=match):
            validate(bad)
            layer_range(bad, 30)
    with pytest.raises(ConfigError, match="unknown argument"):
        get_config("huge")


def test_headlab_run_with_a_bad_file_leaves_nothing(tmp_path, monkeypatch, capsys):
    from common.cli import main

    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path))
    d = _copy(tmp_path, "sst2")
    text = (d / "stsa.binary.dev.txt").read_text().splitlines()
    (d / "stsa.binary.dev.txt").write_text("\n".join(text[:2] + ["9 a sentence"] + text[3:]))
    work = tmp_path / "run"
    rc = main(["run", "act_calibration", "--quick", "--set", 'datasets=("sst2",)',
               "--workdir", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not work.exists()
    assert err[-1].startswith("headlab: error: ") and "stsa.binary.dev.txt:3: unknown class '9'" in err[-1]

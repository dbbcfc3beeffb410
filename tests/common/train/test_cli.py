"""``headlab train``: target lookup and ``--set`` overrides."""

import sys

import pytest

from common.configs import ConfigError, apply_overrides
from common.train.cli import target_module
from projects.lm import train as lm

TRAIN_KEYS = "async_checkpoint, checkpoint_every, compute_dtype, eval_every, grad_accum"


def test_overrides_are_parsed_to_the_field_type():
    c = lm.get_config()
    apply_overrides(c, ["train.steps=7", "optim.learning_rate=1e-4", "train.progress=false",
                        "data.source=tfds", "model.n_layers=3"])
    assert c.train.steps == 7 and c.optim.learning_rate == 1e-4
    assert c.train.progress is False and c.data.source == "tfds" and c.model.n_layers == 3


@pytest.mark.parametrize("item,match", [
    ("train.stepz=3", f"unknown config key 'train.stepz' \\(no 'stepz' in 'train'\\); "
                      f"valid keys: {TRAIN_KEYS}, keep_checkpoints, log_every, progress, steps$"),
    ("nope.steps=3", "unknown config key 'nope.steps' \\(no 'nope' at the top level\\); "
                     "valid keys: data, model, optim, seed, train$"),
    ("train.steps=3.5", "expected int for 'train.steps', got '3.5'"),
    ("train.progress=maybe", "expected bool .* for 'train.progress', got 'maybe'"),
    ("train.steps", "expected key=value"),
])
def test_bad_overrides_are_named(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(lm.get_config(), [item])


def test_targets():
    assert target_module("lm") is lm
    with pytest.raises(ValueError, match="unknown train target 'nosuch'.*train targets: lm"):
        target_module("nosuch")
    with pytest.raises(ConfigError, match="unknown train target '../lm'"):
        target_module("../lm")


def test_bad_target_or_override_is_one_line(capsys):
    from common import cli

    assert cli.main(["train", "nosuch"]) == 2
    assert cli.main(["train", "lm", "--set", "train.stepz=3"]) == 2
    assert cli.main(["train", "lm", "--config", "fine"]) == 2
    assert cli.main(["train", "lm", "--profile", "3"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("headlab: error: unknown train target 'nosuch'")
    assert lines[1].startswith("headlab: error: --set train.stepz=3: unknown config key")
    assert lines[2] == "headlab: error: lm: unknown config 'fine'; use quick or finetune"
    assert lines[3].startswith("headlab: error: --profile must be START:STEPS")
    assert len(lines) == 4


def test_project_without_a_train_target_is_named(tmp_path, monkeypatch, request):
    pkg = tmp_path / "projects_stub"
    (pkg / "projects" / "demo").mkdir(parents=True)
    (pkg / "projects" / "demo" / "__init__.py").write_text("")
    (pkg / "projects" / "demo" / "train.py").write_text("def train():\n    pass\n")
    import projects

    monkeypatch.setattr(projects, "__path__", [*projects.__path__, str(pkg / "projects")])
    request.addfinalizer(lambda: [sys.modules.pop(m, None)
                                  for m in ("projects.demo.train", "projects.demo")])
    with pytest.raises(ValueError, match="has no build"):
        target_module("demo")

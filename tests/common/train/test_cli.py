"""``headlab train``: target lookup and ``--set`` overrides."""

import sys

import pytest

from common.train import lm
from common.train.cli import apply_overrides, target_module


def test_overrides_are_parsed_to_the_field_type():
    c = lm.get_config()
    apply_overrides(c, ["train.steps=7", "optim.learning_rate=1e-4", "train.progress=false",
                        "data.source=tfds", "model.n_layers=3"])
    assert c.train.steps == 7 and c.optim.learning_rate == 1e-4
    assert c.train.progress is False and c.data.source == "tfds" and c.model.n_layers == 3


@pytest.mark.parametrize("item,exc,match", [
    ("train.stepz=3", KeyError, "no config field 'train.stepz'"),
    ("nope.steps=3", KeyError, "no config field 'nope'"),
    ("train.steps=3.5", ValueError, "train.steps is a int"),
    ("train.progress=maybe", ValueError, "is a bool"),
    ("train.steps", ValueError, "expected key=value"),
])
def test_bad_overrides_are_named(item, exc, match):
    with pytest.raises(exc, match=match):
        apply_overrides(lm.get_config(), [item])


def test_targets():
    assert target_module("lm") is lm
    with pytest.raises(ValueError, match="unknown train target 'nosuch'"):
        target_module("nosuch")


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

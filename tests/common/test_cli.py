"""The headlab command line: project discovery, config overrides, errors, generate."""

from __future__ import annotations

import pytest

from common import cli, configs


def test_list_names_every_project(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "icl_regression" in configs.find_projects()
    for name in configs.find_projects():
        assert name in out
    assert "train targets (headlab train TARGET): lm" in out


def test_unknown_project_is_a_clear_error(capsys):
    assert cli.main(["run", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown project 'nonexistent'" in err and "icl_regression" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_a_train_target_is_not_a_run_project(capsys):
    assert cli.main(["run", "lm"]) == 2
    err = capsys.readouterr().err
    assert "unknown project 'lm'" in err and "headlab train lm" in err


def test_overrides_typed_and_unknown_keys_rejected():
    import ml_collections

    cfg = ml_collections.ConfigDict({"steps": 10, "lr": 1e-3, "name": "a", "flag": False,
                                     "model": {"heads": 2}})
    configs.apply_overrides(cfg, ["steps=20", "lr=1", "name=b", "flag=true", "model.heads=4"])
    assert (cfg.steps, cfg.lr, cfg.name, cfg.flag, cfg.model.heads) == (20, 1.0, "b", True, 4)
    assert isinstance(cfg.lr, float)
    with pytest.raises(configs.ConfigError, match="unknown config key 'model.depth'"):
        configs.apply_overrides(cfg, ["model.depth=3"])
    with pytest.raises(configs.ConfigError, match="expected int"):
        configs.apply_overrides(cfg, ["steps=ten"])
    with pytest.raises(configs.ConfigError, match="key=value"):
        configs.apply_overrides(cfg, ["steps"])


@pytest.mark.parametrize("args,message", [
    (["--set", "nosuch=1"], "unknown config key 'nosuch'"),
    (["--set", "steps=ten"], "expected int for 'steps', got 'ten'"),
    (["--config", ":full", "--quick"], "--quick conflicts with the config argument 'full'"),
])
def test_run_config_mistakes_are_one_line(args, message, capsys, tmp_path):
    assert cli.main(["run", "icl_regression", "--workdir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headlab: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "config.json").exists()  # rejected before the run starts


def test_run_passes_the_spec_argument_and_overrides(monkeypatch, tmp_path):
    import projects.icl_regression.run as run_mod

    seen = {}
    monkeypatch.setattr(run_mod, "run", lambda config, workdir: seen.update(config=config))
    spec = "default:quick,steps=30,multitask.subsets=((0, 1), (2, 3))"
    assert cli.main(["run", "icl_regression", "--workdir", str(tmp_path), "--config", spec,
                     "--set", "lr=0.5"]) == 0
    default = "projects.icl_regression.configs.default"
    quick, full = configs.load_config(":quick", default), configs.load_config(None, default)
    c = seen["config"]
    assert (c.steps, c.lr, c.multitask.subsets) == (30, 0.5, ((0, 1), (2, 3)))
    assert c.log_every == quick.log_every != full.log_every  # the quick variant, then overrides
    assert (tmp_path / "config.json").exists()


def test_config_file_missing(capsys):
    assert cli.main(["run", "icl_regression", "--config", "/no/such/config.py"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.smollm2
def test_generate_prints_a_completion(smollm2_path, capsys):
    assert cli.main(["generate", "What is the capital of France? Answer in one word.",
                     "--model", str(smollm2_path), "--max-new-tokens", "8"]) == 0
    assert "Paris" in capsys.readouterr().out

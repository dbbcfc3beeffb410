"""The headlab command line: project registry, config overrides, errors, generate."""

from __future__ import annotations

import pytest

from common import cli


def test_list_names_every_project(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in cli.PROJECTS:
        assert name in out


def test_unknown_project_is_a_clear_error(capsys):
    assert cli.main(["run", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown project 'nonexistent'" in err and "icl_regression" in err


def test_overrides_typed_and_unknown_keys_rejected():
    import ml_collections

    cfg = ml_collections.ConfigDict({"steps": 10, "lr": 1e-3, "name": "a", "flag": False,
                                     "model": {"heads": 2}})
    cli.apply_overrides(cfg, ["steps=20", "lr=1", "name=b", "flag=true", "model.heads=4"])
    assert (cfg.steps, cfg.lr, cfg.name, cfg.flag, cfg.model.heads) == (20, 1.0, "b", True, 4)
    assert isinstance(cfg.lr, float)
    with pytest.raises(cli.CLIError, match="unknown config key 'model.depth'"):
        cli.apply_overrides(cfg, ["model.depth=3"])
    with pytest.raises(cli.CLIError, match="expected int"):
        cli.apply_overrides(cfg, ["steps=ten"])
    with pytest.raises(cli.CLIError, match="key=value"):
        cli.apply_overrides(cfg, ["steps"])


def test_config_file_missing(capsys):
    assert cli.main(["run", "icl_regression", "--config", "/no/such/config.py"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.smollm2
def test_generate_prints_a_completion(smollm2_path, capsys):
    assert cli.main(["generate", "What is the capital of France? Answer in one word.",
                     "--model", str(smollm2_path), "--max-new-tokens", "8"]) == 0
    assert "Paris" in capsys.readouterr().out

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


@pytest.mark.smollm2
def test_generate_says_when_the_token_limit_cut_the_answer(smollm2_path, capsys):
    assert cli.main(["generate", "Write a long story about a dragon.", "--model",
                     str(smollm2_path), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "stopped at --max-new-tokens 3" in out.err


@pytest.mark.parametrize("argv,message", [
    (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["generate", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    (["generate", "hi", "--model", "/no/such/model.gguf"], "'/no/such/model.gguf' is neither"),
    (["train", "nosuch"], "unknown train target 'nosuch'"),
    (["train", "lm", "--mesh", "data=2,tensor=64"],
     "To try it with 128 fake CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=128 "
     "headlab train lm --mesh data=2,tensor=64"),
    (["train", "lm", "--mesh", "data=two"], "degree of 'data' is not an int"),
])
def test_user_errors_of_every_subcommand_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("headlab: error: ") and message in err
    assert err.count("\n") == 1, err  # one line, no traceback


def test_a_corrupt_model_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(12))
    assert cli.main(["generate", "hi", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "generate", "hi", "--model", "/no/such/model.gguf"])
    monkeypatch.setenv("HEADLAB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["generate", "hi", "--model", "/no/such/model.gguf"])


def test_help_is_plain_text_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "``" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--model", "--max-new-tokens", "--temperature", "--seed", "--dtype", "--chat"):
        assert option in out
    assert "(default: 48)" in out and "(default: smollm2-135m-instruct)" in out


def test_run_ends_with_a_short_human_summary(tmp_path):
    class WithHeadline:
        @staticmethod
        def headline(summary):
            return [f"MSE {summary['mse']:.3f} (paper 0.240)", "4 of 5 claims hold"]

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"")
    (tmp_path / "summary.json").write_text("{}")
    text = cli.closing_summary("demo", WithHeadline, {"mse": 0.2381, "deep": {"x": 1}}, tmp_path,
                               96.4)
    assert text.splitlines() == [
        f"headlab: demo finished in 1 min 36 s; run directory {tmp_path}",
        "  MSE 0.238 (paper 0.240)", "  4 of 5 claims hold",
        "  in the run directory: summary.json, figures/ (1 PNG)"]
    plain = cli.closing_summary("demo", object(), {"mse": 0.25, "n": 3, "ok": True, "deep": {}},
                                tmp_path, 5.0)
    assert plain.splitlines()[1:3] == ["  mse = 0.25", "  n = 3"]


def test_a_project_validate_refuses_before_the_run_directory_exists(capsys, tmp_path):
    # projects/pine/configs/default.py defines validate(config): it runs before anything is
    # written, so a bad config leaves no half-made run directory
    workdir = tmp_path / "run"
    assert cli.main(["run", "pine", "--quick", "--workdir", str(workdir),
                     "--set", "methods=('vanilla',)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headlab: error: config.methods must include") and err.count("\n") == 1
    assert not workdir.exists()

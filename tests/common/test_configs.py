"""common.configs: --config specs, --set typing rules, nested keys, errors, project discovery."""

from __future__ import annotations

import sys

import ml_collections
import pytest

from common.configs import (
    ConfigError,
    ConfigSpec,
    apply_overrides,
    find_projects,
    find_train_targets,
    load_config,
    parse_spec,
    parse_value,
)


def make():
    return ml_collections.ConfigDict({
        "steps": 10, "lr": 1e-3, "name": "a", "flag": False, "heads": (1, 2), "dims": [3],
        "extra": None, "model": {"n_heads": 2, "opt": {"beta": 0.9}}})


@pytest.mark.parametrize("text,current,want", [
    ("true", False, True), ("Yes", False, True), ("1", False, True),
    ("FALSE", True, False), ("no", True, False), ("0", True, False),
    ("7", 1, 7), ("-3", 1, -3), ("1_000", 1, 1000),
    ("2", 0.5, 2.0), ("1e-4", 0.5, 1e-4), ("-inf", 0.5, float("-inf")),
    ("hello world", "a", "hello world"), ("1", "a", "1"), ("None", "a", "None"),
    ("(3, 4)", (1,), (3, 4)), ("[3, 4]", (1,), (3, 4)), ("5,", (1,), (5,)),
    ("(3, 4)", [1], [3, 4]), ("()", (1,), ()),
    ("None", None, None), ("3", None, 3), ("[1, 2]", None, [1, 2]), ("toeplitz:0.5", None, "toeplitz:0.5"),
])
def test_values_are_typed_by_the_current_field(text, current, want):
    got = parse_value(text, current)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text,current,expected", [
    ("maybe", False, "bool"), ("2", True, "bool"),
    ("3.5", 1, "int"), ("1e3", 1, "int"), ("true", 1, "int"),
    ("fast", 0.5, "float"),
    ("5", (1,), "tuple"), ("abc", [1], "list"),
])
def test_wrong_type_names_the_expected_type(text, current, expected):
    with pytest.raises(ConfigError, match=f"^expected {expected}\\b.* for 'k', got {text!r}$"):
        parse_value(text, current, "k")


def test_nested_keys_and_order():
    c = apply_overrides(make(), ["model.opt.beta=0.5", "model.n_heads=4", "steps=1", "steps=2",
                                 "heads=[8]", "dims=(4, 5)", "extra=[1, 2]", "name=x=y"])
    assert (c.model.opt.beta, c.model.n_heads, c.steps) == (0.5, 4, 2)
    assert (c.heads, c.dims, c.extra, c.name) == ((8,), [4, 5], [1, 2], "x=y")
    assert apply_overrides(c, []) is c and apply_overrides(c, None) is c


@pytest.mark.parametrize("item,message", [
    ("stepz=1", "--set stepz=1: unknown config key 'stepz' (no 'stepz' at the top level); "
                "valid keys: dims, extra, flag, heads, lr, model, name, steps"),
    ("model.opt.gamma=1", "--set model.opt.gamma=1: unknown config key 'model.opt.gamma' "
                          "(no 'gamma' in 'model.opt'); valid keys: beta"),
    ("model.x.beta=1", "--set model.x.beta=1: unknown config key 'model.x.beta' (no 'x' in "
                       "'model'); valid keys: n_heads, opt"),
    ("steps.x=1", "--set steps.x=1: 'steps' is a int, not a group of fields"),
    ("model=3", "--set model=3: 'model' is a group of fields (n_heads, opt); set one of them, "
                "e.g. model.n_heads=..."),
    ("lr=fast", "--set lr=fast: expected float for 'lr', got 'fast'"),
    ("steps", "--set 'steps': expected key=value"),
    ("=3", "--set '=3': expected key=value"),
])
def test_errors_are_one_line_and_name_the_fault(item, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(make(), [item])
    assert str(e.value) == message


def test_a_typed_config_dict_refusal_is_a_config_error():
    c = ml_collections.ConfigDict({"n": ml_collections.config_dict.placeholder(int)})
    apply_overrides(c, ["n=3"])
    assert c.n == 3
    with pytest.raises(ConfigError, match="^--set n=x: .*"):
        apply_overrides(ml_collections.ConfigDict(
            {"n": ml_collections.config_dict.placeholder(int)}), ["n=x"])


def test_plain_dicts_work_too():
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2"]) == {"a": {"b": 2}}


@pytest.mark.parametrize("text,want", [
    (None, ConfigSpec()), ("", ConfigSpec()),
    ("cfg.py", ConfigSpec("cfg.py")),
    ("cfg.py:", ConfigSpec("cfg.py")),
    ("cfg.py:quick", ConfigSpec("cfg.py", "quick")),
    (":quick", ConfigSpec("", "quick")),
    ("default:quick,steps=5, model.opt.beta=0.5",
     ConfigSpec("default", "quick", ("steps=5", "model.opt.beta=0.5"))),
    ("x.py:steps=5,heads=(1, 2),name='a,b',dims=[3, 4]",
     ConfigSpec("x.py", None, ("steps=5", "heads=(1, 2)", "name='a,b'", "dims=[3, 4]"))),
])
def test_spec_parsing(text, want):
    assert parse_spec(text) == want


def test_spec_with_two_arguments_or_an_unbracketed_tuple_is_an_error():
    with pytest.raises(ConfigError, match="'full' is neither the first item"):
        parse_spec("x.py:quick,full")
    with pytest.raises(ConfigError, match="'2' is neither .* heads=\\(1, 2\\)"):
        parse_spec("x.py:heads=1,2")


def test_load_config_file_arg_and_overrides(tmp_path):
    f = tmp_path / "my_config.py"
    f.write_text("import ml_collections\n"
                 "def get_config(arg=None):\n"
                 "    return ml_collections.ConfigDict({'arg': str(arg), 'steps': 1, 'lr': 0.1})\n")
    c = load_config(f"{f}:quick,steps=5", "nowhere.default", overrides=["steps=6", "lr=1"])
    assert (c.arg, c.steps, c.lr) == ("quick", 6, 1.0)
    assert load_config(str(f), "nowhere.default", quick=True).arg == "quick"
    assert load_config(f"{f}:quick", "nowhere.default", quick=True).arg == "quick"
    assert load_config(str(f), "nowhere.default").arg == "None"
    with pytest.raises(ConfigError, match="^--quick conflicts with the config argument 'full'$"):
        load_config(f"{f}:full", "nowhere.default", quick=True)
    with pytest.raises(ConfigError, match="no such file '/no/such.py'"):
        load_config("/no/such.py", "nowhere.default")
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no get_config"):
        load_config(str(tmp_path / "bad.py"), "nowhere.default")


def test_load_config_names_resolve_beside_the_default():
    default = "projects.icl_regression.configs.default"
    assert load_config("default:quick", default).steps == load_config(None, default, quick=True).steps
    with pytest.raises(ConfigError, match="no module projects.icl_regression.configs.nosuch"):
        load_config("nosuch", default)


def test_discovery_reads_the_projects_folders(tmp_path, monkeypatch):
    root = tmp_path / "projects"
    for name, files in {"paper_a": ["run.py", "configs/default.py"],
                        "paper_b": ["run.py"],  # no configs/: not a project
                        "target_c": ["train.py"],
                        "paper_d": ["run.py", "configs/default.py", "train.py"],
                        "not-a-name": ["run.py", "configs/default.py"]}.items():
        for f in files:
            (root / name / f).parent.mkdir(parents=True, exist_ok=True)
            (root / name / f).write_text("def build(c, w):\n    pass\n" if name == "target_c"
                                         else "def train():\n    pass\n")
    import projects

    monkeypatch.setattr(projects, "__path__", [*projects.__path__, str(root)])
    assert set(find_projects()) >= {"icl_regression", "paper_a", "paper_d"}
    assert not {"paper_b", "target_c", "lm", "not-a-name"} & set(find_projects())
    assert set(find_train_targets()) >= {"lm", "target_c"}
    assert not {"paper_d", "icl_regression"} & set(find_train_targets())  # train.py without build
    assert find_projects() == sorted(find_projects())


def test_discovery_without_a_projects_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "projects", None)  # import projects -> ModuleNotFoundError
    assert find_projects() == [] and find_train_targets() == []

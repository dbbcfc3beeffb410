"""Experiment configs from the command line: ``--config`` specs, ``--set`` overrides, projects.

One parser for ``headlab run``, ``headlab train``, ``python -m common.train`` and
``python -m tpu.aot``:

- ``--config NAME[:ARG,key=value,...]``: ``NAME`` is a config file (``path/to/x.py``) or the name
  of a module beside the default config (``default`` = ``projects/<p>/configs/default.py``; an
  empty name means the default). ``ARG`` (at most one, first) goes to ``get_config(ARG)``;
  ``key=value`` items are overrides, applied like ``--set`` (a value with commas goes in brackets
  or quotes: ``heads=(1, 2)``).
- ``--set key.sub=value``: typed by the field's current value: ``bool`` (true/false/1/0/yes/no),
  ``int``, ``float`` (an int is accepted), ``str`` (the text as is), ``tuple``/``list`` (a Python
  literal; either bracket kind, converted to the field's kind), ``None`` (a Python literal, else
  the text). An unknown key names the valid keys at its level; a wrong value names the type.
- Projects are the folders ``projects/<name>/`` with ``run.py`` and ``configs/``; train targets
  are the folders whose ``train.py`` defines ``build``. Both are found by listing the folders of
  the ``projects`` package (imported by name at call time: nothing here imports it statically).

Every user mistake raises :class:`ConfigError`, whose message is one line.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import pathlib
import re
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad config spec, override, project or target name; the message is one line."""


# ---------------------------------------------------------------------------------------------
# --config NAME[:ARG,key=value,...]


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    """A parsed ``--config`` spec: ``name`` ("" = the default), ``arg`` and ``overrides``."""

    name: str = ""
    arg: str | None = None
    overrides: tuple[str, ...] = ()


def _split_items(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: ``"a=(1, 2),b=x"`` -> ``["a=(1, 2)", "b=x"]``."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [s.strip() for s in items if s.strip()]


def parse_spec(text: str | None) -> ConfigSpec:
    """``"NAME[:ARG,key=value,...]"`` -> :class:`ConfigSpec` (None or "" -> the default)."""
    if not text:
        return ConfigSpec()
    name, _, rest = text.partition(":")
    arg, overrides = None, []
    for i, item in enumerate(_split_items(rest)):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            arg = item
        else:
            raise ConfigError(
                f"--config {text!r}: {item!r} is neither the first item (the config argument) "
                "nor key=value; bracket values that contain commas, e.g. heads=(1, 2)")
    return ConfigSpec(name.strip(), arg, tuple(overrides))


def _load_module(spec: ConfigSpec, default_module: str):
    if not spec.name:
        return importlib.import_module(default_module)
    path = pathlib.Path(spec.name)
    if path.suffix == ".py" or "/" in spec.name:
        if not path.is_file():
            raise ConfigError(f"--config: no such file {spec.name!r}")
        s = importlib.util.spec_from_file_location(f"_headlab_config_{path.stem}", path)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
        return module
    package = default_module.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{spec.name}")
    except ModuleNotFoundError as e:
        if e.name != f"{package}.{spec.name}":
            raise
        raise ConfigError(f"--config: no such file {spec.name!r} and no module "
                          f"{package}.{spec.name}") from None


def load_config(spec: str | ConfigSpec | None, default_module: str, *, quick: bool = False,
                overrides: Iterable[str] = ()):
    """The ConfigDict a ``--config`` spec names, with its overrides and then ``overrides``.

    Args:
      spec: ``NAME[:ARG,key=value,...]`` (see the module docstring); None = the default.
      default_module: the module of the default config, e.g.
        ``"projects.icl_regression.configs.default"``; names resolve beside it.
      quick: ``--quick``: the argument ``"quick"`` (an error with another argument).
      overrides: ``--set`` items, applied after the spec's own.
    """
    if not isinstance(spec, ConfigSpec):
        spec = parse_spec(spec)
    module = _load_module(spec, default_module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {module.__name__} has no get_config(arg)")
    arg = spec.arg
    if quick:
        if arg not in (None, "quick"):
            raise ConfigError(f"--quick conflicts with the config argument {arg!r}")
        arg = "quick"
    return apply_overrides(module.get_config(arg), [*spec.overrides, *overrides])


# ---------------------------------------------------------------------------------------------
# --set key=value

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _is_group(value) -> bool:
    return hasattr(value, "keys") and hasattr(value, "__getitem__")


def parse_value(text: str, current, key: str = "value"):
    """``text`` typed like ``current`` (the field's value now); :class:`ConfigError` if it can't be."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"expected {expected} for {key!r}, got {text!r}")

    if _is_group(current):
        raise ConfigError(f"{key!r} is a group of fields ({', '.join(sorted(current.keys()))}); "
                          f"set one of them, e.g. {key}.{sorted(current.keys())[0]}=...")
    if isinstance(current, bool):
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise wrong("bool (true/false/1/0/yes/no)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise wrong("int") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise wrong("float") from None
    if isinstance(current, str):
        return text
    value = _literal(text)
    if isinstance(current, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise wrong(f"{type(current).__name__} (a Python literal such as (1, 2))")
        return type(current)(value)
    if current is not None and not isinstance(value, type(current)):
        raise wrong(type(current).__name__)
    return value


def apply_overrides(config, overrides: Iterable[str]):
    """Apply ``key.sub=value`` items to ``config`` (a ConfigDict or dict) in order; returns it."""
    for item in overrides or ():
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        parts = key.split(".")
        node, where = config, "at the top level"
        for depth, part in enumerate(parts):
            if not _is_group(node):
                raise ConfigError(f"--set {item}: {'.'.join(parts[:depth])!r} is a "
                                  f"{type(node).__name__}, not a group of fields")
            if part not in node:
                raise ConfigError(f"--set {item}: unknown config key {key!r} (no {part!r} "
                                  f"{where}); valid keys: {', '.join(sorted(node.keys()))}")
            if depth < len(parts) - 1:
                node, where = node[part], f"in {'.'.join(parts[:depth + 1])!r}"
        try:
            value = parse_value(text, node[parts[-1]], key)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        try:
            node[parts[-1]] = value
        except TypeError as e:  # a typed ConfigDict field (e.g. a placeholder) refused it
            raise ConfigError(f"--set {item}: {e}") from None
    return config


# ---------------------------------------------------------------------------------------------
# projects/<name>/


def _project_dirs() -> list[pathlib.Path]:
    try:
        package = importlib.import_module("projects")
    except ModuleNotFoundError:
        return []
    dirs = {}
    for root in package.__path__:
        for d in pathlib.Path(root).iterdir():
            if d.is_dir() and d.name.isidentifier():
                dirs.setdefault(d.name, d)
    return [dirs[n] for n in sorted(dirs)]


def find_projects() -> list[str]:
    """Names of ``projects/<name>/`` folders with ``run.py`` and ``configs/`` (``headlab run``)."""
    return [d.name for d in _project_dirs() if (d / "run.py").is_file() and (d / "configs").is_dir()]


_BUILD = re.compile(r"^def build\(", re.MULTILINE)


def find_train_targets() -> list[str]:
    """Names of ``projects/<name>/`` folders whose ``train.py`` defines ``build`` (``headlab train``)."""
    return [d.name for d in _project_dirs()
            if (d / "train.py").is_file() and _BUILD.search((d / "train.py").read_text())]

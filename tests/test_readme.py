"""README.md's Python and shell examples work as pasted."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    """The fenced ``language`` code blocks of README.md, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.smollm2
def test_python_blocks_run_as_pasted(smollm2_path, capsys):
    found = blocks("python")
    assert found, "README.md has no python block"
    for code in found:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "(1, 9, 5, 5)"  # layer 3's pattern: 9 heads over the 5 prompt tokens
    assert out[1] == "('layer', 'head', 'd_model_in', 'd_model_out')"
    assert out[2].strip() and "<|im_end|>" not in out[2]


def test_shell_commands_name_real_entry_points():
    """Every ``headlab`` subcommand and ``python -m`` module in the README's bash blocks exists."""
    import importlib.util

    from common.cli import build_parser

    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    text = "\n".join(blocks("bash"))
    for sub in re.findall(r"\bheadlab (\w+)", text):
        assert sub in subcommands, sub
    for module in re.findall(r"python -m ([\w.]+)", text):
        assert importlib.util.find_spec(module) is not None, module

"""Within ``common.attention`` no two modules import each other, not even lazily in functions."""

from __future__ import annotations

import ast
from pathlib import Path

import common.attention

ROOT = Path(common.attention.__file__).parent
PREFIX = "common.attention"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PREFIX, *parts))


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[2:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Modules of ``common.attention`` that ``path`` imports anywhere in its body
    (``from pkg import submodule`` counts as importing the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub.startswith(PREFIX) and _is_module(sub) else node.module)
    return {m for m in out if m == PREFIX or m.startswith(PREFIX + ".")}


def test_no_import_cycles():
    graph = {_module_name(p): _imports(p) - {_module_name(p)} for p in ROOT.rglob("*.py")}
    assert "common.attention.pallas.api" in graph and "common.attention.backends" in graph
    assert "common.attention.pallas.api" in graph["common.attention.backends"]  # lazy, still seen
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])

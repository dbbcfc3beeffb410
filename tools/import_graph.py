"""The import graph of ``common/``: modules, packages, cycles and imports that point upward.

    python -m tools.import_graph            # package graph, cycles, forbidden imports
    python -m tools.import_graph --modules  # every module edge

Every ``import`` statement counts, including those inside functions (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` do not (they never run). Imports by string
(``importlib.import_module``, as the CLI does to find a project's ``run.py``) are not seen.
``tests/common/test_layering.py`` fails on any cycle and on any import of ``tools``, ``tests``
or ``projects`` from ``common/``.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("tools", "tests", "projects")


def module_files(package: str = "common", root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module under ``package`` (``__init__`` = package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name | ast.Attribute)
                    and ast.unparse(child.test).endswith("TYPE_CHECKING")):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Absolute names imported by module ``name`` (a submodule where ``from pkg import sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return out


def module_graph(package: str = "common", root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """``{module: {imported module or outside name}}`` for the modules of ``package``.

    Edges to this repository's other top-level packages (``tools``, ``projects``, ...) are kept
    by their full name; third-party imports are dropped.
    """
    files = module_files(package, root)
    ours = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    graph = {}
    for name, path in files.items():
        deps = {d for d in imports_of(name, path, set(files)) if d.split(".")[0] in ours}
        # ``import common.models.config`` depends on that module, not on every parent package
        graph[name] = {d for d in deps if d != name}
    return graph


def package_of(module: str) -> str:
    """``common.models.decoder`` -> ``common.models``; ``common.rundir`` stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "common" else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to ``common.<subpackage>`` (and outside top-level) nodes."""
    out: dict[str, set[str]] = {}
    for a, deps in graph.items():
        pa = package_of(a)
        out.setdefault(pa, set())
        out[pa].update(package_of(d) for d in deps if package_of(d) != pa)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def forbidden_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(module, imported)`` pairs where ``common/`` imports tools, tests or projects."""
    return sorted((a, d) for a, deps in graph.items() for d in deps
                  if d.split(".")[0] in FORBIDDEN)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.import_graph",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", action="store_true", help="print every module edge")
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    graph = module_graph(root=pathlib.Path(args.root))
    shown = graph if args.modules else package_graph(graph)
    for a in sorted(shown):
        print(f"{a} -> {', '.join(sorted(shown[a])) or '(nothing)'}")
    bad = cycles(graph) + cycles(package_graph(graph))
    print(f"cycles: {bad or 'none'}")
    up = forbidden_imports(graph)
    print(f"imports of {'/'.join(FORBIDDEN)}: {up or 'none'}")
    return 1 if bad or up else 0


if __name__ == "__main__":
    sys.exit(main())

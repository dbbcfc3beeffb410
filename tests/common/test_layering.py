"""The layering of ``common/``: no import cycles (modules or packages), nothing imported from
``tools``, ``tests`` or ``projects``; checked on the import graph ``tools/import_graph.py`` reads."""

from __future__ import annotations

import pathlib

from tools.import_graph import cycles, forbidden_imports, module_graph, package_graph


def test_common_has_no_import_cycles():
    graph = module_graph()
    assert "common.models.decoder" in graph and "common.attention.core" in graph
    assert cycles(graph) == [], "modules of common/ that import each other (lazily or not)"
    assert cycles(package_graph(graph)) == [], "packages of common/ that import each other"


def test_common_imports_nothing_above_it():
    assert forbidden_imports(module_graph()) == []


def test_the_checks_see_cycles_lazy_imports_and_upward_imports(tmp_path):
    """The graph reader on a planted package: a lazy cycle, a TYPE_CHECKING import (ignored),
    and an import of ``tools``."""
    pkg = tmp_path / "common"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "tools").mkdir()
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py", tmp_path / "tools" / "__init__.py"):
        init.write_text("")
    (pkg / "a.py").write_text("from common import b\n")
    (pkg / "b.py").write_text("def f():\n    from common.a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from common import a\n")
    (pkg / "sub" / "d.py").write_text("from ..c import y\nimport tools.fetch\n")
    graph = module_graph(root=pathlib.Path(tmp_path))
    assert graph["common.c"] == set()
    assert graph["common.sub.d"] == {"common.c", "tools.fetch"}
    assert cycles(graph) == [["common.a", "common.b"]]
    assert forbidden_imports(graph) == [("common.sub.d", "tools.fetch")]
    assert package_graph(graph)["common.sub"] == {"common.c", "tools"}

"""The package's shape: no import cycle among saia_ctl's modules, no production
module that imports the tests.

Imports are read with ``ast`` (nothing is imported): module-level imports and
lazy ones inside functions both count, because a lazy import only hides a
cycle; imports under ``if TYPE_CHECKING:`` do not, because they never run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGE = "saia_ctl"
# Where production code lives: the package, the migrations, the batch helpers.
PRODUCTION_DIRS = ("saia_ctl", "migrations", "sbatch")


@dataclass(frozen=True)
class Import:
    """One import statement: the module that runs it, what it names, where."""

    source: str
    target: str
    path: Path
    line: int


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package is its ``__init__``)."""
    names: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth, except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports.

    ``from pkg import x`` names the module ``pkg.x`` when there is one, else ``pkg``.
    """
    is_package = path.name == "__init__.py"
    out: list[Import] = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            # ``import a.b.c`` where only ``a.b`` is ours: the longest known prefix.
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                out.append(Import(name, ".".join(parts), path, node.lineno))
    return out


def find_cycles(edges: list[Import]) -> list[list[Import]]:
    """One cycle (as its import statements, in order) per strongly connected group of modules."""
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
            graph.setdefault(e.target, {})
    # Tarjan's strongly connected components (iterative: no recursion limit to hit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    cycles: list[list[Import]] = []
    for group in groups:
        members = set(group)
        # A shortest way back to the group's first module, by breadth-first search inside the group.
        start = group[0]
        came_from: dict[str, Import] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following: list[str] = []
            for node in frontier:
                for nxt, edge in sorted(graph[node].items()):
                    if nxt in members and nxt not in came_from:
                        came_from[nxt] = edge
                        following.append(nxt)
            frontier = following
        path: list[Import] = []
        node = start
        while True:
            edge = came_from[node]
            path.append(edge)
            node = edge.source
            if node == start:
                break
        cycles.append(path[::-1])
    return cycles


def describe(cycle: list[Import], root: Path) -> str:
    hops = [f"{e.source} -> {e.target} ({e.path.relative_to(root)}:{e.line})" for e in cycle]
    return "; ".join(hops)


def package_imports(root: Path, package: str) -> list[Import]:
    known = module_names(root, package)
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def test_no_import_cycle_among_the_package_modules() -> None:
    cycles = find_cycles(package_imports(REPO, PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, REPO) for c in cycles)


def test_no_production_module_imports_the_tests() -> None:
    offenders = []
    for folder in PRODUCTION_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in _import_nodes(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if not node.level
                    else []
                )
                for n in names:
                    if n.split(".")[0] in ("tests", "bench"):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {n}")
    assert not offenders, "\n".join(offenders)


# --- the checker's own checks: it finds what it must and only that --------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "import pkg.a\n"},
            [["pkg.a", "pkg.b"]],
            id="module-level",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from pkg.b import f\n",
                "pkg/b.py": "def f():\n    from . import a\n    return a\n",
            },
            [["pkg.a", "pkg.b"]],
            id="lazy-relative",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "",
                "pkg/sub/__init__.py": "",
                "pkg/sub/x.py": "from ..y import g\n",
                "pkg/y.py": "class C:\n    def m(self):\n        from pkg.sub.x import h\n",
            },
            [["pkg.sub.x", "pkg.y"]],
            id="nested-package",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n",
                "pkg/b.py": "from pkg import a\n",
            },
            [],
            id="type-checking-only",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from pkg import b\n",
                "pkg/b.py": "from pkg import a\n",
            },
            [["pkg.a", "pkg.b"]],
            id="type-checking-else-runs",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "from pkg import a\n",
                "pkg/a.py": "import json\n",
                "pkg/b.py": "from pkg import a\n",
            },
            [],
            id="no-cycle",
        ),
    ],
)
def test_the_cycle_finder(tmp_path: Path, files: dict[str, str], expected: list[list[str]]) -> None:
    _write(tmp_path, files)
    cycles = find_cycles(package_imports(tmp_path, "pkg"))
    assert [sorted({e.source for e in c}) for c in cycles] == expected
    for c in cycles:  # each is a closed path: every hop starts where the previous one ended
        assert all(c[i].target == c[(i + 1) % len(c)].source for i in range(len(c)))
        assert describe(c, tmp_path)

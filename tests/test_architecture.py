"""The package's import graph: no cycles, and the device modules only where devices are run.

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import`` and
``from ... import`` statement counts, at module level, inside functions and under
``TYPE_CHECKING`` alike, with relative imports resolved.  ``from package import name`` is an
edge to ``package.name`` when that is a module, else to ``package``.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "pulsetrain"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Modules that may import ``pulsetrain.devices``: the devices themselves, and what hosts,
#: starts or offers them (device servers, the supervisor, the demo, the GUI and the CLI).
DEVICE_USERS = (
    f"{PACKAGE}.devices",
    f"{PACKAGE}.server",
    f"{PACKAGE}.supervisor",
    f"{PACKAGE}.demo",
    f"{PACKAGE}.gui",
    f"{PACKAGE}.cli",
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imported(
    module: str, path: Path, known: dict[str, Path], package_name: str
) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` of every import of a module of the package in *path*."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if not _within(target, package_name):
                continue
            while target not in known and "." in target:  # `import a.b.attr` style names
                target = target.rpartition(".")[0]
            if target in known and target != module:
                yield target, node.lineno


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` of every module of the package at *root*."""
    known = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        edges: dict[str, int] = {}
        for target, line in _imported(module, path, known, root.name):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle through the first module of a strongly connected component (shortest path)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle found in {component}")  # pragma: no cover


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in itertools.pairwise(cycle)]
    return "; ".join(steps)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import thing\n",
        "a.py": "import os\nimport pkg.b.attr\n\n\ndef f():\n    from .sub import c\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        "sub/__init__.py": "from . import c\nfrom .. import b\n",
        "sub/c.py": "from ..a import thing\nfrom .d import x\nimport numpy\n",
        "sub/d.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = {m: set(edges) for m, edges in import_graph(pkg).items()}
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b", "pkg.sub.c"},  # `import pkg.b.attr`; a function-level import
        "pkg.b": {"pkg.a"},  # `from pkg import a` names the module, under TYPE_CHECKING too
        "pkg.sub": {"pkg.sub.c", "pkg.b"},
        "pkg.sub.c": {"pkg.a", "pkg.sub.d"},
        "pkg.sub.d": set(),
    }
    assert _strongly_connected(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert len(import_graph()) > 50  # and the real package is read


def test_no_import_cycles():
    graph = import_graph()
    cycles = [_cycle_in(c, graph) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_devices_are_imported_only_where_devices_are_run():
    graph = import_graph()
    offenders = [
        f"{module} (line {line}) imports {target}"
        for module, edges in sorted(graph.items())
        if not any(_within(module, allowed) for allowed in DEVICE_USERS)
        for target, line in sorted(edges.items())
        if _within(target, f"{PACKAGE}.devices")
    ]
    assert not offenders, "device modules imported outside their users:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b": 1}, "b": {"c": 2}, "c": {}}, []),
        ({"a": {"b": 1}, "b": {"a": 2}}, [["a", "b"]]),
        ({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(edges, expected):
    assert _strongly_connected(edges) == expected
    for component in expected:
        cycle = _cycle_in(component, edges)
        assert cycle[0] == cycle[-1] == component[0]
        assert all(b in edges[a] for a, b in itertools.pairwise(cycle))

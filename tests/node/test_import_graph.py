"""The shape of node/: its import graph has no cycles, and only the assembler imports the
daemon. Invariant: a component depends on narrow seams (``node.ports`` and the Protocols
beside each consumer), never on the object that wires them together."""

from __future__ import annotations

import ast
from pathlib import Path

NODE = Path(__file__).resolve().parents[2] / "node"
ASSEMBLER = "daemon"  # node/daemon.py: the one module that builds a node from components


def _graph() -> dict[str, set[str]]:
    """module -> node modules it imports (at run time or for type checking: both count)."""
    modules = {p.stem for p in NODE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in NODE.glob("*.py"):
        deps: set[str] = set()
        for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(stmt, ast.ImportFrom) and stmt.module:
                if stmt.module.startswith("node."):
                    deps.add(stmt.module.split(".")[1])
                elif stmt.module == "node":
                    deps |= {a.name for a in stmt.names if a.name in modules}
            elif isinstance(stmt, ast.Import):
                deps |= {a.name.split(".")[1] for a in stmt.names if a.name.startswith("node.")}
        graph[path.stem] = deps & modules - {path.stem}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_node_import_graph_is_acyclic() -> None:
    graph = _graph()
    assert len(graph) > 20  # the walk found node/
    assert _cycles(graph) == []


def test_only_the_assembler_imports_the_daemon() -> None:
    graph = _graph()
    assert ASSEMBLER in graph
    assert sorted(m for m, deps in graph.items() if ASSEMBLER in deps) == []


def test_the_checks_see_a_cycle_and_a_daemon_import() -> None:
    """The checks themselves can fail: a graph with a cycle through the daemon is caught."""
    graph = {"daemon": {"forward"}, "forward": {"daemon", "http"}, "http": set()}
    assert _cycles(graph) == [["daemon", "forward"]]

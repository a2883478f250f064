"""The package's shape: no import cycle between its modules (a package may import its own)."""

from __future__ import annotations

import ast
import pathlib

from conftest import REPO_ROOT


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each catkd_jax module -> the catkd_jax modules it imports, anywhere in its code."""
    paths = {_module_name(path): path for path in (REPO_ROOT / "catkd_jax").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("catkd_jax"):
                imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in paths else node.module
                             for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("catkd_jax")}
        # A package importing its own submodules (re-exports) is not a cycle of the modules.
        graph[name] = {module for module in imported if module in paths and not module.startswith(name + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                cycles.append(stack[stack.index(dependency):] + [dependency])
            elif dependency not in state:
                visit(dependency)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_imports_one_that_imports_it_back():
    graph = _import_graph()
    assert {"catkd_jax.checkpoints", "catkd_jax.convert", "catkd_jax.training.loop"} <= set(graph)
    assert "catkd_jax.convert" in graph["catkd_jax.checkpoints"]  # .pth files are read through convert
    assert _cycles(graph) == []

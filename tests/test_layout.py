"""The package's layout shows its architecture: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import dynamic_tinybert

PACKAGE = Path(dynamic_tinybert.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every package module `path` imports, at the top, inside functions or for type checking alike."""
    name = module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import paths that lead from a module back to itself (one per module that starts one)."""
    found = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for nxt in sorted(graph[module]):
                if nxt == start:
                    found.append([*path, start])
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def test_the_import_graph_is_read_off_the_source():
    graph = import_graph()
    assert "dynamic_tinybert.frontier" in graph["dynamic_tinybert.pipeline"]
    assert "dynamic_tinybert.cli.common" in graph["dynamic_tinybert.cli.answer"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        [
            "c",
            "a",
            "b",
            "c",
        ],
    ]


def test_no_module_imports_one_that_imports_it_back():
    assert circles(import_graph()) == []


def test_the_core_does_not_import_the_cli_the_benchmark_or_training():
    """The answering path (model to pipeline) stands alone; the workflows are built on it, not into it."""
    core = ["model", "length_config", "checkpoint", "features", "decoding", "options", "pipeline", "frontier"]
    outer = ("dynamic_tinybert.cli", "dynamic_tinybert.benchmark", "dynamic_tinybert.training")
    graph = import_graph()
    for name in core:
        assert not [m for m in graph[f"dynamic_tinybert.{name}"] if m.startswith(outer)], name

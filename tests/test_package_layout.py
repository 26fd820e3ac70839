"""The package's modules import each other without a circle (a module can be read before those that use it)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_pg_gpt2"


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` runs only when the file is a script, never when the module is imported."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def relative_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports relatively (`from .x import y`, `from . import x`), at any depth."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return found & modules - {path.stem}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {path.stem for path in package.glob("*.py")}
    return {path.stem: relative_imports(path, modules) for path in sorted(package.glob("*.py"))}


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of `graph` as the modules along it, or `None`."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return err.args[1]
    return None


def test_the_package_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert "outputs" in graph["convert"] and "outputs" in graph["hub"]
    found = circle(graph)
    assert found is None, f"import circle: {' -> '.join(found)}"


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from .b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "c.py").write_text("if __name__ == '__main__':\n    from .a import f\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": set()}
    assert circle(graph) in (["a", "b", "a"], ["b", "a", "b"])

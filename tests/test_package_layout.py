"""The package's layout as rules: the remote code is the package root and imports nothing of the tools, every
import points down the order of concerns, nothing imports in a circle, and no module outgrows a reading.

Read from the source with `ast` (every import counts: module level, inside functions, `if __name__ == "__main__"`
blocks), so a rule broken in a file that no test imports is still found.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "modeling_pg_gpt2"

# What save_pretrained copies into every model folder and the Hub serves as remote code: the package root.
REMOTE_CODE = {
    "__init__",
    "configuration_pg_gpt2",
    "modeling_pg_gpt2",
    "task_heads",
    "model_inputs",
    "fused_loss",
    "batched_matvec",
}
# The concerns, lowest first: a module may import its own concern and those before it, never one after it.
CONCERNS = ["", "common", "data", "reports", "generation", "evaluation", "export", "training", "hub", "cli"]
MAX_LINES = 450


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """`data.corpus` for modeling_pg_gpt2/data/corpus.py; `data` for its `__init__.py`; `__init__` for the root's."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def concern(module: str) -> str:
    """The subpackage a module belongs to ("" for the root, the model)."""
    return module.split(".")[0] if "." in module or module in CONCERNS else ""


def imports(path: Path, package: Path = PACKAGE) -> tuple[set[str], set[str]]:
    """(package modules `path` imports, relatively or by the package's name; other top-level modules it imports).

    Every import counts, at any depth: inside functions and in `if __name__ == "__main__":` blocks too.
    """
    module = module_name(path, package)
    here = module.split(".") if path.name == "__init__.py" and module != "__init__" else module.split(".")[:-1]
    relative, absolute = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
            for alias in node.names:  # `from .x import y`: module x.y if there is one, else a name of x
                candidate = ".".join([*base, alias.name])
                known = (package / (candidate.replace(".", "/") + ".py")).exists()
                relative.add(candidate if known else ".".join(base))
        elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == package.name:  # absolute, ours
            base = node.module.split(".")[1:]
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                known = (package / (candidate.replace(".", "/") + ".py")).exists()
                relative.add(candidate if known else ".".join(base))
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return {name or "__init__" for name in relative}, absolute


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of `package` and the package modules it imports (a subpackage counts as its `__init__`)."""
    modules = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        found, _ = imports(path, package)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of `graph` as the modules along it, or `None`."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return err.args[1]
    return None


def test_the_package_root_is_the_remote_code_and_imports_only_itself_torch_and_transformers() -> None:
    assert {path.stem for path in PACKAGE.glob("*.py")} == REMOTE_CODE
    allowed = {"torch", "transformers", "__future__", *sys.stdlib_module_names}
    for name in REMOTE_CODE:
        relative, absolute = imports(PACKAGE / f"{name}.py")
        assert relative <= REMOTE_CODE, f"{name}.py imports {relative - REMOTE_CODE}: tool code would ship with models"
        assert absolute <= allowed, f"{name}.py imports {absolute - allowed}: a dependency of every published model"


def test_every_subpackage_is_a_concern_of_the_order() -> None:
    found = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert found == set(CONCERNS) - {""}


def test_imports_point_down_the_order_of_concerns() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if CONCERNS.index(concern(target)) > CONCERNS.index(concern(module))
    ]
    assert not wrong, f"imports against the order {' < '.join(c or 'model' for c in CONCERNS)}: {wrong}"


def test_the_package_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert "common.outputs" in graph["export.convert"] and "common.outputs" in graph["hub.push"]  # the graph is read
    found = circle(graph)
    assert found is None, f"import circle: {' -> '.join(found)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: module_name(path))
def test_no_module_outgrows_a_reading(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by what its parts do"


def test_the_rules_see_function_level_imports_main_blocks_and_subpackages(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from .sub.b import f\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (tmp_path / "c.py").write_text(f"if __name__ == '__main__':\n    from {tmp_path.name}.sub import b\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"sub.b"}, "c": {"sub.b"}, "sub": set(), "sub.b": {"a"}}
    assert circle(graph) in (["a", "sub.b", "a"], ["sub.b", "a", "sub.b"])

"""The package's shape, checked on the source: no import cycles (between modules, or between folders), command lines
at the top, layers that only look down, test files that pytest can tell apart.

Every import statement counts, including those inside functions (a cycle dodged
by a function-level import is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cir"
TESTS = Path(__file__).resolve().parent
# Command-line modules: parse, call the library, print. No library module imports them; a grid runs them by module
# name (cir.grid.stages.MODULES), as `python -m` does, in a process of its own or in-process through importlib.
COMMAND_LINES = {"cir.fit", "cir.evaluate", "cir.submit", "cir.publish", "cir.browse.__main__", "cir.grid.__main__",
                 "cir.report.__main__", "cir.data.synth.__main__"}
# Lower layers never reach up into evaluation, training tasks or the training run.
LOWER_LAYERS = ("cir.data", "cir.models")
UPPER_LAYERS = ("cir.evaluation", "cir.tasks", "cir.training")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def within(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports(name: str) -> set[str]:
    """cir modules that `name` imports anywhere in its source (`from pkg import mod` counts as pkg.mod)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_imports_inside_functions_and_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "cir.evaluation.features" in GRAPH["cir.evaluation.scoring"]
    assert "cir.models.factory" in GRAPH["cir.models"]


def folder(name: str) -> str:
    """The node a module counts as between folders: its first-level package (cir.data for cir.data.synth.writer),
    or the module itself at the package's top (cir.config)."""
    return ".".join(name.split(".")[:2]) if MODULES[name].parent != PACKAGE else name


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {folder(n): set() for n in graph}
    for name, targets in graph.items():
        folders[folder(name)] |= {folder(t) for t in targets} - {folder(name)}
    return folders


def test_the_checker_finds_a_loop_between_folders() -> None:
    """The loop of c0420ee: cir.config caught cir.data's errors while cir.data reads cir.config."""
    graph = {"cir.config": {"cir.data.errors"}, "cir.data.errors": set(), "cir.data.check": {"cir.config"}}
    assert cycles(graph) == []
    assert cycles(folder_graph(graph)) == [["cir.config", "cir.data"]]


def test_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


def test_no_import_cycle_between_folders() -> None:
    """A folder (cir.data, cir.evaluation, ...) and a top-level module, or two folders, never import each other."""
    assert cycles(folder_graph(GRAPH)) == []


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by basename (rootdir-relative, no __init__.py): two alike stop the collection."""
    seen: dict[str, list[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_command_line(name: str) -> None:
    if name in COMMAND_LINES:
        return
    assert not (GRAPH[name] & COMMAND_LINES), f"{name} imports {sorted(GRAPH[name] & COMMAND_LINES)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if within(n, LOWER_LAYERS)))
def test_data_and_models_do_not_import_eval_or_tasks(name: str) -> None:
    upward = sorted(t for t in GRAPH[name] if within(t, UPPER_LAYERS))
    assert not upward, f"{name} imports {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines"

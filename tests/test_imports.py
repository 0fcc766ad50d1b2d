"""No import circles inside the cmrops package, and data flows down its layers.

The import graph is built from the source with ``ast``: every ``import`` and ``from ... import``
anywhere in a module (function-level imports included, relative ones resolved; those under
``if TYPE_CHECKING:`` left out, as they never run) and ``importlib.import_module("...")`` with a
literal name. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg`` (a package's ``__init__`` importing its submodules is not a circle with them).
``cmrops._core`` (the Rust extension, typed by ``_core.pyi``) is a module of its own.

* No strongly connected component has more than one module: no circle, however long.
* The shells - ``cmrops.cli``, ``cmrops.pipeline``, ``cmrops.dag_tasks`` (the DAG's tasks),
  ``cmrops.airflow_hooks`` and ``cmrops.airflow_cli`` (``make run``'s Airflow) - sit on top: no
  other module imports them, nor airflow or streamlit, and nothing a stage module reaches
  through its imports is a shell.
* Only the stages, the shells, the stage commands' runner and the commands over releases
  (ablation, data card, withdrawal) read ``params.yaml`` (``cmrops.params.load_section`` /
  ``read_yaml``); below them settings are passed in (the engine's, for one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cmrops"
SHELLS = frozenset(
    {
        "cmrops.cli",
        "cmrops.pipeline",
        "cmrops.dag_tasks",
        "cmrops.airflow_hooks",
        "cmrops.airflow_cli",
    }
)
FORBIDDEN_EXTERNAL = ("airflow", "streamlit")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.setdefault(".".join(parts), path)  # a .py wins over its .pyi
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name ``module`` imports (``pkg.name`` for ``from pkg import name``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_nodes(tree)
    package = module if path.name.startswith("__init__.") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield from (f"{source}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value


@cache
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``module -> cmrops modules it imports`` and ``module -> other top-level packages``."""
    modules = _modules()
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps, others = set(), set()
        for name in _imported_names(module, path):
            if name.split(".")[0] != "cmrops":
                others.add(name.split(".")[0])
                continue
            while name and name not in modules:  # pkg.name (not a module) -> pkg
                name = name.rpartition(".")[0]
            if name and name != module:
                deps.add(name)
        internal[module], external[module] = deps, others
    return internal, external


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def _path(edges: dict[str, set[str]], component: list[str]) -> str:
    """One circle through the component, for the failure message."""
    start, inside = component[0], set(component)
    trail, node, seen = [start], start, {start}
    while True:
        node = next(n for n in sorted(edges[node]) if n in inside and (n == start or n not in seen))
        trail.append(node)
        if node == start or node in seen:
            return " -> ".join(trail)
        seen.add(node)


def test_the_graph_sees_the_package() -> None:
    internal, external = graph()
    assert len(internal) > 100
    assert "cmrops.stage_table" in internal["cmrops.cli"]
    assert "cmrops._core" in internal["cmrops.codes"]  # the extension, through its .pyi
    assert "cmrops.stages.align" in internal["cmrops.stages.clean"]  # a function-level import
    assert "cmrops.codes" not in internal["cmrops"]  # only under TYPE_CHECKING (lazy at run time)
    assert "numpy" in external["cmrops.codes"]


def test_the_check_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(edges) == [["a", "b", "c"]]
    assert _path(edges, ["a", "b", "c"]) == "a -> b -> c -> a"
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    internal, _ = graph()
    found = [_path(internal, c) for c in circles(internal)]
    assert not found, "import circles in cmrops:\n" + "\n".join(found)


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_nothing_below_imports_a_shell(shell: str) -> None:
    internal, _ = graph()
    users = sorted(m for m, deps in internal.items() if shell in deps and m not in SHELLS)
    assert not users, f"{shell} is a shell; imported by {users}"


def test_nothing_below_the_shells_imports_airflow_or_streamlit() -> None:
    _, external = graph()
    bad = {
        m: sorted(x for x in others if x in FORBIDDEN_EXTERNAL)
        for m, others in external.items()
        if m not in SHELLS
    }
    assert not {m: x for m, x in bad.items() if x}


#: Modules that read a params file: the stages, the shells, the DAG's schedule, the loader, the
#: stage commands' runner (the thread budget, ``engine.threads``, is set before a handler
#: imports torch or ONNX Runtime), and the commands over releases, which read the params.yaml a
#: release recorded (or the project's, for the tombstone file collect.withdrawn names).
READS_PARAMS = (
    "cmrops.stages.", *SHELLS, "cmrops.schedule", "cmrops.params", "cmrops.stage_command",
    "cmrops.ablation", "cmrops.datacard", "cmrops.withdrawal",
)  # fmt: skip


def test_only_stages_and_shells_read_params_files() -> None:
    readers = []
    for module, path in _modules().items():
        if module.startswith(READS_PARAMS):
            continue
        names = set(_imported_names(module, path))
        if names & {"cmrops.params.load_section", "cmrops.params.read_yaml"}:
            readers.append(module)
    assert readers == []


def test_the_stages_reach_no_shell() -> None:
    internal, _ = graph()
    reached: set[str] = set()
    todo = [m for m in internal if m.startswith("cmrops.stages.")]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(internal[m])
    assert "cmrops.stages.clean" in reached
    assert "cmrops.cleaning.rules.min_side" in reached
    assert not reached & SHELLS, sorted(reached & SHELLS)

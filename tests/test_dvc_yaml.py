"""dvc.yaml lists, for every stage, the code that stage runs: each module of the package that
``cmrops.stages.<stage>`` imports (transitively, lazy imports included) - and the code that
writes what DVC sees of it (``cmrops.digest`` for ``--digest``, ``cmrops.plot_tables`` for
``--plots``) - is covered by a dep, so editing it reruns the stage (a left-out dependency makes
stale results look fresh)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    for p in (
        REPO / (name.replace(".", "/") + ".py"),
        REPO / name.replace(".", "/") / "__init__.py",
    ):
        if p.is_file():
            return p
    return None


def _imports(path: Path) -> set[str]:
    parts = path.relative_to(REPO).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cmrops.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("cmrops"):
                continue
            if module != "cmrops":
                found.add(module)
            for a in node.names:  # `from cmrops import io` imports the module cmrops.io
                if _module_file(f"{module}.{a.name}"):
                    found.add(f"{module}.{a.name}")
    return found


def _closure(module: str) -> set[str]:
    """Files of the package modules ``module`` reaches (the package's own __init__ - the core
    API every stage shares - is not followed)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = _module_file(m)
        if f is not None:
            todo.extend(_imports(f))
    return {str(_module_file(m).relative_to(REPO)) for m in seen if _module_file(m)}


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_deps_cover_the_code_the_stage_runs(stage: str) -> None:
    deps = [d.rstrip("/") for d in SPEC[stage]["deps"]]
    args = SPEC[stage]["cmd"].split()
    files = _closure(f"cmrops.stages.{stage}")
    assert f"cmrops/stages/{stage}.py" in files
    for flag, module in (("--digest", "cmrops.digest"), ("--plots", "cmrops.plot_tables")):
        if flag in args:
            files |= _closure(module)
    missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
    assert missing == [], f"dvc.yaml stage {stage} lacks deps {missing}"


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_params_section_and_outputs_declared(stage: str) -> None:
    spec = SPEC[stage]
    assert stage in spec.get("params", []), stage
    assert spec.get("outs") or spec.get("metrics"), stage
    assert spec["cmd"].startswith(f"cmrops {stage} --params params.yaml")

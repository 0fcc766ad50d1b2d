"""A fix for a DVC bug the project's pipeline meets, applied to the DVC of this environment.

``dvc repro --dry`` and ``dvc exp run --dry`` fail on a fresh clone, at the first stage whose
input another stage has not made yet::

    ERROR: failed to reproduce 'preprocess': [Errno 2] No such file or directory:
    '.../data/raw/samples.parquet'

A dry run still asks the run cache whether the stage ran before (``dvc.stage.cache``), and its
``_can_hash(stage)`` hashes every dependency - a missing one raises instead of answering "no".
DVC's own fix (its issue 9818; on its main branch, in no release up to 3.67.1, the newest this
project can install) checks ``dep.exists`` first. This module makes the same change: a stage
with a missing local dependency cannot be looked up in the run cache, so the dry run reports it
as one that would run. Nothing else changes - when every dependency exists the original
function decides, and a real run never reaches a missing dependency here (it fails earlier).

``scripts/bootstrap.sh`` installs ``cmrops_dvc_fixes.pth`` into the virtual environment, which
imports this module at interpreter start; importing it installs an import hook that patches
``dvc.stage.cache`` when (and only if) DVC loads it. Remove both once DVC ships the fix
(``tests/test_dvc_dry_run.py`` runs the real ``dvc exp run --dry`` on a fresh project copy).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["PTH_NAME", "TARGET", "install", "is_patched"]

#: The module patched.
TARGET = "dvc.stage.cache"
#: The ``.pth`` file bootstrap writes into site-packages (sorted after ``cmrops.pth``, which
#: puts an editable checkout on ``sys.path``).
PTH_NAME = "cmrops_dvc_fixes.pth"
_MARK = "_cmrops_missing_deps_checked"


def install() -> None:
    """Patch ``dvc.stage.cache`` now if it is loaded, else when it is (idempotent)."""
    module = sys.modules.get(TARGET)
    if module is not None:
        _patch(module)
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def is_patched(module: ModuleType) -> bool:
    return bool(getattr(getattr(module, "_can_hash", None), _MARK, False))


def _patch(module: ModuleType) -> None:
    if is_patched(module):
        return
    original = module._can_hash

    def _can_hash(stage: Any) -> bool:
        # a dry run reaches the run cache with deps no stage has made yet: no lookup for those
        if any(dep.protocol == "local" and not dep.exists for dep in stage.deps):
            return False
        return bool(original(stage))

    setattr(_can_hash, _MARK, True)
    _can_hash.__wrapped__ = original  # type: ignore[attr-defined]
    module._can_hash = _can_hash  # type: ignore[attr-defined]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds :data:`TARGET` through the other finders and patches it once it has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """The module's own loader (source, code and file name for tracebacks come from it), with
    the patch applied after the module has run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _patch(module)


install()

"""The dashboard's view of one release, and trends across all of them.

**A release as a folder.** Every dashboard page reads a project folder. The workspace is the
latest run; an earlier release (:mod:`cmrops.releases`) is shown through a *view folder*
``.cmrops/cache/views/<id>/`` that :func:`view` assembles from what this machine holds: the
release record's small files (its metrics, plots, ``dvc.lock``, ``params.yaml``) and, for every
output its ``dvc.lock`` names, a link to that exact version in the local DVC cache
(``.dvc/cache/files/md5/..``; a directory output's ``.dir`` listing is followed file by file).
Outputs whose objects are not in the cache are left out and :func:`view` lists them, so a page
says what is missing (``dvc pull`` / ``cmrops release checkout <id>`` brings them) instead of
showing another release's tables. When the workspace's ``dvc.lock`` is the release's, the
workspace itself is the view.

**Trends** (:func:`trends`): per release, oldest first, from the recorded metrics files (read
through :mod:`cmrops.telemetry.files`): samples in / kept / quarantined by stage and reason,
leaking near-duplicate pairs, mAP per model, bits and direction, and the alignment's AUROC.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cmrops import releases
from cmrops.telemetry import files as mfiles

__all__ = ["ReleaseView", "trends", "view", "workspace_release"]

VIEWS = ".cmrops/cache/views"


@dataclass(frozen=True)
class ReleaseView:
    """The folder a page reads for one release, and what of it this machine lacks."""

    release: releases.Release | None  # None: the workspace (no release matches it)
    folder: Path
    workspace: bool  # the folder is the project itself
    missing: list[str] = field(default_factory=list)  # outputs not in the local DVC cache


def _lock_hash(path: Path) -> str | None:
    from cmrops import io

    return io.sha256_file(path) if path.is_file() else None


def workspace_release(project: Path, listed: list[releases.Release]) -> releases.Release | None:
    """The release whose ``dvc.lock`` the workspace holds now, if any."""
    mine = _lock_hash(Path(project) / "dvc.lock")
    if mine is None:
        return None
    for rel in reversed(listed):
        if rel.files.get("dvc.lock") == mine:
            return rel
    return None


def _outs(lock: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for stage in (lock.get("stages") or {}).values():
        found.extend(o for o in stage.get("outs") or [] if isinstance(o, dict) and o.get("path"))
    return found


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        return
    os.symlink(src, dst)


def view(project: Path, rel: releases.Release | None) -> ReleaseView:
    """The folder to show ``rel`` from (``None``: the workspace); see the module docstring."""
    project = Path(project)
    if rel is None or (
        rel.files.get("dvc.lock") and rel.files["dvc.lock"] == _lock_hash(project / "dvc.lock")
    ):
        return ReleaseView(rel, project, True)
    if rel.path is None:
        raise releases.ReleaseError(
            f"release {rel.id} has no record on this machine: `cmrops release checkout {rel.id}`"
        )
    folder = project / VIEWS / rel.id
    done = folder / ".complete.json"
    if done.is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        return ReleaseView(rel, folder, False, list(info.get("missing") or []))
    for name in rel.files:
        _link(rel.path / name, folder / name)
    missing: list[str] = []
    lock_file = rel.path / "dvc.lock"
    if lock_file.is_file():
        import yaml

        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
        for out in _outs(lock):
            path, md5 = str(out["path"]), str(out.get("md5") or "")
            if path in rel.files or not md5:
                continue
            obj = releases.cache_object(project, md5)
            if not obj.is_file():
                missing.append(path)
                continue
            if md5.endswith(".dir"):
                try:
                    listing = json.loads(obj.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    missing.append(path)
                    continue
                objects = [releases.cache_object(project, str(e["md5"])) for e in listing]
                absent = [o for o in objects if not o.is_file()]
                if absent:
                    missing.append(path)
                    continue
                for e, o in zip(listing, objects, strict=True):
                    _link(o, folder / path / str(e["relpath"]))
            else:
                _link(obj, folder / path)
    from cmrops import io

    io.write_json(done, {"release": rel.id, "missing": sorted(missing)})
    return ReleaseView(rel, folder, False, sorted(missing))


# --------------------------------------------------------------------------- trends

_STAGE_FILES = {
    "collect": "data/raw/metrics.json",
    "preprocess": "data/interim/metrics.json",
    "clean": "metrics/quality.json",
}


def _read(rel: releases.Release, name: str) -> dict[str, Any]:
    try:
        return rel.read_json(name) or {}
    except (OSError, ValueError):
        return {}


def trends(listed: list[releases.Release]) -> dict[str, pd.DataFrame]:
    """Per release (oldest first): ``samples`` (release, created, stage, in, kept, quarantined),
    ``reasons`` (release, created, stage, reason, samples), ``leakage`` (release, created,
    leaking_pairs), ``maps`` (release, created, model, method, bits, direction, map) and
    ``alignment`` (release, created, auroc: held-out swapped-caption AUROC, auroc_planted: on the
    planted swaps of a synthetic set)."""
    samples, reasons, leakage, maps, align = [], [], [], [], []
    for rel in listed:
        base = {"release": rel.id, "created": pd.Timestamp(rel.created)}
        for stage, name in _STAGE_FILES.items():
            m = _read(rel, name)
            if not m:
                continue
            counts = mfiles.stage_samples(stage, m)
            if counts:
                samples.append({**base, "stage": stage, **counts})
            for reason, n in mfiles.quarantine_reasons(stage, m).items():
                reasons.append({**base, "stage": stage, "reason": reason, "samples": n})
        split = _read(rel, "metrics/split.json")
        if split:
            leakage.append({**base, "leaking_pairs": mfiles.split_leaking(split)})
        retrieval = _read(rel, "metrics/retrieval.json")
        models = retrieval.get("models") or {}
        for (model, direction), value in mfiles.retrieval_maps(retrieval).items():
            info = models.get(model) or {}
            maps.append(
                {
                    **base,
                    "model": model,
                    "method": info.get("method"),
                    "bits": info.get("bits"),
                    "direction": direction,
                    "map": value,
                }
            )
        a = _read(rel, "data/align/metrics.json")
        if a:
            align.append(
                {
                    **base,
                    "auroc": (a.get("holdout") or {}).get("swapped_auroc"),
                    "auroc_planted": (a.get("synthetic") or {}).get("auroc"),
                }
            )
    return {
        "samples": pd.DataFrame(
            samples, columns=["release", "created", "stage", "in", "kept", "quarantined"]
        ),
        "reasons": pd.DataFrame(
            reasons, columns=["release", "created", "stage", "reason", "samples"]
        ),
        "leakage": pd.DataFrame(leakage, columns=["release", "created", "leaking_pairs"]),
        "maps": pd.DataFrame(
            maps, columns=["release", "created", "model", "method", "bits", "direction", "map"]
        ),
        "alignment": pd.DataFrame(align, columns=["release", "created", "auroc", "auroc_planted"]),
    }

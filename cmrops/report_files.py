"""The pipeline outputs the dashboard reads, and how: a missing file is "not yet", an unreadable
one a :class:`ReportError` that names the file and the command that rewrites it.

:data:`FILES` maps a key to the path (relative to the project root) and the stage that writes
it; :mod:`cmrops.report` and :mod:`cmrops.report_media` read through the functions here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cmrops.telemetry.files import metrics_path

__all__ = [
    "FILES",
    "IMAGE_ROOT",
    "ReportError",
    "image_file",
    "missing",
    "path",
    "read_json",
    "read_table",
    "stamp",
    "unreadable",
]


def _record(stage: str) -> str:
    """The stage's metrics record, from :func:`cmrops.telemetry.files.metrics_path`."""
    rel = metrics_path(stage)
    assert rel is not None, stage
    return rel


#: The pipeline outputs read here (relative to the project root), and the stage rewriting each.
FILES: dict[str, tuple[str, str]] = {
    "raw_metrics": (_record("collect"), "collect"),
    "raw_samples": ("data/raw/samples.parquet", "collect"),
    "raw_quarantine": ("data/raw/quarantine.parquet", "collect"),
    "interim_metrics": (_record("preprocess"), "preprocess"),
    "interim_samples": ("data/interim/samples.parquet", "preprocess"),
    "interim_quarantine": ("data/interim/quarantine.parquet", "preprocess"),
    "features_meta": ("data/interim/features/meta.json", "preprocess"),
    "thumbs": ("data/interim/thumbs.parquet", "preprocess"),
    "label_metrics": (_record("label"), "label"),
    "labels": ("data/labelled/labels.parquet", "label"),
    "review_queue": ("data/labelled/review_queue.csv", "label"),
    "quality": (_record("clean"), "clean"),
    "clean_quarantine": ("data/clean/quarantine.parquet", "clean"),
    "split": (_record("split"), "split"),
    "train": (_record("train"), "train"),
    "retrieval": (_record("evaluate"), "evaluate"),
    "runlog": (".cmrops/runs.jsonl", "any stage"),
    "dvc_lock": ("dvc.lock", "dvc repro / dvc commit"),
}


#: Where images live: sample tables hold ``objects/<sha[:2]>/<sha>`` relative to ``data/raw``
#: (a video's or audio clip's file too: the ``image_path`` column names the data set's media).
IMAGE_ROOT = "data/raw"


class ReportError(ValueError):
    """A pipeline output exists but cannot be read; the message says which and what to rerun."""


def path(project: Path, key: str) -> Path:
    return Path(project) / FILES[key][0]


def unreadable(project: Path, key: str, err: Exception) -> ReportError:
    rel, stage = FILES[key]
    return ReportError(
        f"{Path(project) / rel} cannot be read ({type(err).__name__}: {err}); "
        f"rerun `cmrops {stage}` (or `make run`) to rewrite it"
    )


def read_json(project: Path, key: str) -> dict[str, Any]:
    p = path(project, key)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise unreadable(project, key, e) from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise unreadable(project, key, e) from e
    if not isinstance(data, dict):
        raise unreadable(project, key, TypeError("expected a JSON object"))
    return data


def read_table(project: Path, key: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    p = path(project, key)
    if not p.is_file():
        return None
    try:
        return pd.read_parquet(p, columns=columns)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise unreadable(project, key, e) from e


def missing(project: Path, keys: Iterable[str]) -> list[str]:
    """The paths (relative) of the ``FILES`` keys that are not there yet."""
    return [FILES[k][0] for k in keys if not path(project, k).is_file()]


def stamp(project: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every output read here (absent ones left out): a cache key
    that changes whenever a stage rewrites something, so a new run shows without a restart."""
    root = Path(project)
    paths = [rel for rel, _ in FILES.values()]
    codes = root / "data" / "codes"
    if codes.is_dir():
        paths += [str(p.relative_to(root)) for p in sorted(codes.glob("*/meta.json"))]
    out = []
    for rel in paths:
        try:
            st = (root / rel).stat()
        except OSError:
            continue
        out.append((rel, st.st_mtime_ns, st.st_size))
    return tuple(out)


def image_file(project: Path, image_path: Any) -> str | None:
    if not isinstance(image_path, str) or not image_path:
        return None
    return str(Path(project) / IMAGE_ROOT / image_path)

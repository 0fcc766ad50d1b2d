"""What the CLI wraps every pipeline stage command in: time it, append a run-log line with the
headline figures of its metrics file, then push the stage's metrics when a Pushgateway is
configured. DVC (``cmrops <stage>`` in ``dvc.yaml``) and the Airflow DAG (``run_stage``, which
calls the CLI) both pass here, so either records the same way.

A run is recorded in the project it *writes to*: the nearest folder at or above the stage's
output that holds ``dvc.yaml`` (a project) or ``cmrops-workspace.json`` (a trial's workspace).
A stage run that writes somewhere else - a scratch folder, another project - records there
(beside its outputs), so it never touches this project's run log or metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cmrops import runlog
from cmrops.telemetry import files, push

__all__ = ["metrics_file_of", "project_root", "recorded", "run_recorded"]

#: Files that make a folder the root of its runs' records.
ROOT_MARKERS = ("dvc.yaml", "cmrops-workspace.json")


def project_root(
    path: str | os.PathLike[str], params_file: str | os.PathLike[str] | None = None
) -> Path:
    """The project (or trial workspace) that output ``path`` (a stage's metrics file or output
    folder) belongs to: the nearest folder at or above it holding one of :data:`ROOT_MARKERS`;
    else the params file's folder when the output lies inside it; else the folder that holds
    the stage's output folder (``/tmp/x`` for ``/tmp/x/raw``)."""
    p = Path(path).resolve()
    folder = p if p.is_dir() else p.parent
    for candidate in (folder, *folder.parents):
        if any((candidate / m).is_file() for m in ROOT_MARKERS):
            return candidate
    if params_file is not None:
        home = Path(params_file).resolve().parent
        if folder == home or home in folder.parents:
            return home
    return folder.parent


def metrics_file_of(args: argparse.Namespace) -> Path | None:
    """The metrics file a stage command writes: ``--metrics``, else ``<--out>/metrics.json``."""
    explicit = getattr(args, "metrics", None)
    if explicit:
        return Path(explicit)
    out = getattr(args, "out", None)
    return Path(out) / "metrics.json" if out else None


@contextlib.contextmanager
def recorded(work: str | os.PathLike[str], stage: str, part: str) -> Iterator[None]:
    """Record a part of ``stage``'s work run on its own (no metrics file of its own): its time
    counts into the stage's duration in this run."""
    with runlog.record_stage(project_root(work), stage, part=part):
        yield


def run_recorded(args: argparse.Namespace, call: Callable[[], int]) -> int:
    """Run ``call`` (the stage command, returning its exit code) recorded as stage
    ``args.command``; exceptions propagate after the failed run is recorded."""
    stage = str(args.command)
    metrics_file = metrics_file_of(args)
    params_file = getattr(args, "params", None)
    project = project_root(metrics_file if metrics_file is not None else Path.cwd(), params_file)

    def headline() -> tuple[dict[str, int], dict[str, float]]:
        data = files.load_json(metrics_file) if metrics_file else None
        return files.headline(stage, data) if data else ({}, {})

    try:
        with runlog.record_stage(project, stage, headline) as attempt:
            rc = call()
            if rc:
                attempt.fail()
        return rc
    finally:
        push.push_after_stage(project, stage)

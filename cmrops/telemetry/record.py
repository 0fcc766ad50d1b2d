"""What the CLI wraps every pipeline stage command in: time it, append a run-log line with the
headline figures of its metrics file, then push the stage's metrics when a Pushgateway is
configured. DVC (``cmrops <stage>`` in ``dvc.yaml``) and the Airflow DAG (``run_stage``, which
calls the CLI) both pass here, so either records the same way.

The run log goes to the project root: the nearest folder holding ``dvc.yaml`` at or above the
params file (where DVC and the DAG keep it), else the params file's folder.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from cmrops import runlog
from cmrops.telemetry import files, push

__all__ = ["metrics_file_of", "project_root", "run_recorded"]


def project_root(params_file: str | os.PathLike[str]) -> Path:
    folder = Path(params_file).resolve().parent
    if not folder.is_dir():  # a bad --params: the stage fails on it; record beside us
        return Path.cwd()
    for candidate in (folder, *folder.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return folder


def metrics_file_of(args: argparse.Namespace) -> Path | None:
    """The metrics file a stage command writes: ``--metrics``, else ``<--out>/metrics.json``."""
    explicit = getattr(args, "metrics", None)
    if explicit:
        return Path(explicit)
    out = getattr(args, "out", None)
    return Path(out) / "metrics.json" if out else None


def run_recorded(args: argparse.Namespace, call: Callable[[], int]) -> int:
    """Run ``call`` (the stage command, returning its exit code) recorded as stage
    ``args.command``; exceptions propagate after the failed run is recorded."""
    stage = str(args.command)
    project = project_root(getattr(args, "params", "params.yaml"))
    metrics_file = metrics_file_of(args)

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

"""The run log: one JSON line per stage run under ``<project>/.cmrops/runs.jsonl``.

It is a *runtime* file (git-ignored, never a DVC out): it holds wall-clock times and run ids,
which must stay out of the DVC-tracked outputs so an Airflow run and ``dvc repro`` produce the
same bytes. The dashboard and the Prometheus collector read it; whoever reads it before any
stage ran gets an empty list.

Writes are crash-safe: each record is one ``write`` of a whole line to a file opened with
``O_APPEND``, then ``fsync``. A process killed mid-write can leave a torn last line; readers skip
it, and the next writer starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "RUNLOG_PATH",
    "RUN_ID_ENV",
    "Attempt",
    "StageRun",
    "append_run",
    "current_run_id",
    "data_version",
    "read_runs",
    "record_stage",
    "wall_seconds",
]

#: The run log, relative to the project root.
RUNLOG_PATH = ".cmrops/runs.jsonl"
#: Environment variable naming the run (the DAG sets it to Airflow's ``run_id``).
RUN_ID_ENV = "CMROPS_RUN_ID"

STATUSES = ("success", "failed")


@dataclass(frozen=True)
class StageRun:
    """One run of one stage."""

    run_id: str
    stage: str
    started_at: float  # unix seconds
    finished_at: float  # unix seconds
    duration_s: float
    status: str  # "success" | "failed"
    data_version: str | None
    counts: dict[str, int] = field(default_factory=dict)  # e.g. in / kept / quarantined
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. "map/<model>/<direction>"
    # a part of the stage's work run on its own (preprocess's mapped shard tasks: "shards");
    # None: the stage command itself
    part: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRun:
        """Parse one record; ``ValueError``/``TypeError``/``KeyError`` when it is not one."""
        status = str(d["status"])
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        dv = d.get("data_version")
        return cls(
            run_id=str(d["run_id"]),
            stage=str(d["stage"]),
            started_at=float(d["started_at"]),
            finished_at=float(d["finished_at"]),
            duration_s=float(d["duration_s"]),
            status=status,
            data_version=None if dv is None else str(dv),
            counts={str(k): int(v) for k, v in (d.get("counts") or {}).items()},
            metrics={str(k): float(v) for k, v in (d.get("metrics") or {}).items()},
            part=None if d.get("part") is None else str(d["part"]),
        )


def wall_seconds(runs: list[StageRun], run: StageRun) -> float:
    """The wall-clock time of ``run``'s stage in its run: from the first record of that stage
    and run id (the mapped shard tasks of preprocess, ``part="shards"``, come before the merge)
    to ``run``'s end. ``run.duration_s`` alone when it was the stage's only work."""
    starts = [r.started_at for r in runs if r.run_id == run.run_id and r.stage == run.stage
              and r.finished_at <= run.finished_at]  # fmt: skip
    span = run.finished_at - min(starts, default=run.started_at)
    return run.duration_s if span <= run.duration_s + 1e-3 else round(span, 6)


def runlog_file(project: str | os.PathLike[str]) -> Path:
    return Path(project) / RUNLOG_PATH


def read_runs(project: str | os.PathLike[str]) -> list[StageRun]:
    """Every recorded stage run, oldest first; ``[]`` when there is no log. Torn or foreign
    lines (a writer killed mid-line, a hand edit) are skipped."""
    path = runlog_file(project)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    runs: list[StageRun] = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            runs.append(StageRun.from_dict(obj))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.debug("%s:%d: skipped unreadable run record (%s)", path, n, e)
    return runs


def append_run(project: str | os.PathLike[str], run: StageRun) -> Path:
    """Append ``run`` as one line (``O_APPEND``, one write, ``fsync``); returns the log's path."""
    path = runlog_file(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = run.to_json().encode() + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _ends_torn(fd):
            line = b"\n" + line  # never glue a record onto a torn one
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


_GENERATED_RUN_ID: list[str] = []


def current_run_id() -> str:
    """``$CMROPS_RUN_ID`` (the DAG sets Airflow's ``run_id``); otherwise an id generated once
    per process, ``local__<UTC time>_<random>``."""
    env = os.environ.get(RUN_ID_ENV, "").strip()
    if env:
        return env
    if not _GENERATED_RUN_ID:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _GENERATED_RUN_ID.append(f"local__{stamp}_{uuid.uuid4().hex[:8]}")
    return _GENERATED_RUN_ID[0]


def data_version(project: str | os.PathLike[str]) -> str | None:
    """A short content hash of the outputs recorded in ``dvc.lock`` (12 hex digits), followed
    by ``+g<short sha>`` when the project is a git checkout; ``None`` when neither exists."""
    root = Path(project)
    parts: list[str] = []
    lock = _lock_digest(root / "dvc.lock")
    if lock:
        parts.append(lock)
    sha = _git_short_sha(root)
    if sha:
        parts.append(f"g{sha}")
    return "+".join(parts) or None


def _lock_digest(lock: Path) -> str | None:
    import yaml

    try:
        spec = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        log.debug("no dvc.lock digest from %s: %s", lock, e)
        return None
    stages = spec.get("stages") if isinstance(spec, dict) else None
    if not isinstance(stages, dict):
        return None
    items: list[str] = []
    for name in sorted(stages):
        outs = stages[name].get("outs") if isinstance(stages[name], dict) else None
        for out in outs or []:
            if isinstance(out, dict):
                digest = out.get("md5") or out.get("hash") or ""
                items.append(f"{name}\t{out.get('path')}\t{digest}")
    if not items:
        return None
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def _git_short_sha(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and sha else None


class Attempt:
    """Handed out by :func:`record_stage`: call :meth:`fail` when the stage reports failure
    without raising (a non-zero exit code)."""

    def __init__(self) -> None:
        self.failed = False

    def fail(self) -> None:
        self.failed = True


@contextlib.contextmanager
def record_stage(
    project: str | os.PathLike[str],
    stage: str,
    headline: Callable[[], tuple[dict[str, int], dict[str, float]]] | None = None,
    part: str | None = None,
) -> Iterator[Attempt]:
    """Time the block and append a :class:`StageRun` for it: ``success`` with the counts and
    metrics ``headline()`` returns (read after the block, from the stage's metrics files), or
    ``failed`` when the block raises (the exception propagates) or calls ``attempt.fail()``. A
    run log that cannot be written is a warning, never a stage failure."""
    started, t0 = time.time(), time.perf_counter()
    attempt = Attempt()
    status = "failed"
    try:
        yield attempt
        status = "failed" if attempt.failed else "success"
    finally:
        duration = time.perf_counter() - t0
        counts: dict[str, int] = {}
        metrics: dict[str, float] = {}
        if status == "success" and headline is not None:
            try:
                counts, metrics = headline()
            except Exception as e:  # telemetry never fails a finished stage
                log.warning("run log: could not read %s's metrics files: %s", stage, e)
        run = StageRun(
            run_id=current_run_id(),
            stage=stage,
            started_at=round(started, 3),
            finished_at=round(started + duration, 3),
            duration_s=round(duration, 6),
            status=status,
            data_version=data_version(project),
            counts=counts,
            metrics=metrics,
            part=part,
        )
        try:
            append_run(project, run)
        except OSError as e:
            log.warning("run log: could not write %s: %s", runlog_file(project), e)

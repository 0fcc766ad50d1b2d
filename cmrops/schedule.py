"""The ``schedule:`` section of params.yaml: when and how long the Airflow DAG runs.

Airflow reads it when it parses the DAG file (a schedule must exist before any run), so this
module is small and imports nothing heavy. Nothing here changes what a stage writes: it is no
DVC param.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["SECTION", "ScheduleParams", "load"]

SECTION = "schedule"


@dataclass(frozen=True)
class ScheduleParams:
    """When the DAG runs, how long it may take, and what happens when it is unpaused."""

    cron: str | None = "0 3 * * *"  # UTC; None: no timed runs (trigger by hand or by asset)
    assets: list[str] = field(default_factory=list)  # asset URIs whose updates start a run
    # Unpausing the DAG (it starts paused) after a cron slot has passed: false waits for the
    # next slot; true runs the latest missed slot at once (Airflow's run_immediately)
    run_immediately: bool = False
    run_timeout_minutes: int | None = 360  # a run still going after this is failed
    task_timeout_minutes: int | None = 120  # a task still going after this is failed (retried)
    # alert (log + $CMROPS_ALERT_WEBHOOK / $CMROPS_ALERT_EMAIL) when a run is not finished this
    # long after it was queued; None: no deadline (Airflow's DeadlineAlert, run by the triggerer)
    deadline_minutes: int | None = None

    def __post_init__(self) -> None:
        for name in ("run_timeout_minutes", "task_timeout_minutes", "deadline_minutes"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 minute or null, got {v}")


def load(params_file: str | os.PathLike[str]) -> ScheduleParams:
    """The section from ``params_file`` (strict: unknown keys and sections are errors); the
    defaults when the file does not exist."""
    from pathlib import Path

    from cmrops.params import load_section

    if not Path(params_file).is_file():
        return ScheduleParams()
    return load_section(params_file, SECTION, ScheduleParams)

"""
### cmrops pipeline

Builds a cross-modal retrieval dataset and its hashing models, one task per stage:

`collect` → `changes` → `preprocess` (planned into shards, one **mapped** task per group of
shards, then merged) → `align` → `label` → `clean` → `split` → `train` (pool `gpu`) →
`evaluate` → `version` (`dvc commit`, `dvc push`, a **release** you can go back to:
`cmrops release list / checkout ID`).

**Trigger form**: every field is optional; **Trigger** with the defaults runs `params.yaml` and
makes a release. A run with another `params_file` or an override (`synthetic_n`) is a **trial**:
it works in its own folder `.cmrops/trials/<id>/` and never touches the release in the project.

- `params_file` - relative to the project (default `params.yaml`)
- `synthetic_n` - size of the built-in synthetic set (a trial; at least 40)
- `stop_after` - the last stage to run
- `storage_root` - `s3://bucket/prefix` for workers that share no disk (default: the project
  folder, or `$CMROPS_STORAGE_ROOT`)
- `dvc_remote` - DVC remote of the push (default: the default remote, or `$CMROPS_DVC_REMOTE`)
- `push` - `dvc push` at the end (default on)

**Schedule** (`schedule:` in params.yaml, read when this file is parsed): a cron (UTC, daily at
03:00 by default) and/or asset URIs; every run is incremental, and `changes` skips the rest when
nothing is new. The DAG starts **paused**: unpausing it runs nothing until the next cron slot
(`schedule.run_immediately: true` runs the latest missed slot at once). Task and run timeouts
and a deadline come from the same section; failures call `cmrops.airflow_hooks.on_failure`
(log + `$CMROPS_ALERT_WEBHOOK` / `$CMROPS_ALERT_EMAIL`).

Task bodies live in `cmrops.dag_tasks`; this file only wires them.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import (
    Asset,
    AssetAny,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    task,
)

from cmrops import schedule as schedule_params
from cmrops.airflow_hooks import on_failure
from cmrops.stage_table import STAGES

PROJECT = os.environ.get("CMROPS_PROJECT") or str(Path(__file__).resolve().parents[1])
SCHEDULE = schedule_params.load(Path(PROJECT) / "params.yaml")
#: The smallest synthetic set that runs end to end (split needs a few clean samples per set).
MIN_SYNTHETIC_N = 40

RAW = Asset("cmrops://dataset/raw")
CLEAN = Asset("cmrops://dataset/clean")
SPLIT = Asset("cmrops://dataset/split")
MODELS = Asset("cmrops://models/hashing")
RETRIEVAL = Asset("cmrops://metrics/retrieval")
VERSIONED = Asset("cmrops://dataset/versioned")


def _schedule(s: schedule_params.ScheduleParams) -> Any:
    # The DAG has no start_date: with one, catchup=False still fires the latest past slot the
    # moment the DAG is first unpaused. Without one, Airflow asks run_immediately; its False
    # still runs a slot that passed within the last tenth of the interval, so "never" is a
    # zero timedelta.
    timetable = (
        CronTriggerTimetable(
            s.cron, timezone="UTC", run_immediately=True if s.run_immediately else timedelta(0)
        )
        if s.cron
        else None
    )
    assets = [Asset(uri) for uri in s.assets]
    if timetable is not None and assets:
        return AssetOrTimeSchedule(timetable=timetable, assets=AssetAny(*assets))
    return AssetAny(*assets) if assets else timetable


def _minutes(m: int | None) -> timedelta | None:
    return timedelta(minutes=m) if m else None


def _deadline(s: schedule_params.ScheduleParams) -> Any:
    if not s.deadline_minutes:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    from cmrops.airflow_hooks import deadline_missed

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=s.deadline_minutes),
        callback=AsyncCallback(deadline_missed, kwargs={"minutes": s.deadline_minutes}),
    )


#: Celery queue of the train task (GPU machines serve it) when ``$CMROPS_GPU_QUEUE`` is set.
GPU_QUEUE = os.environ.get("CMROPS_GPU_QUEUE") or None

DEFAULT_ARGS = {
    "owner": "cmrops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": _minutes(SCHEDULE.task_timeout_minutes),
    "on_failure_callback": on_failure,
}


def _body(fn: Any) -> Any:
    """Run ``fn(cfg, context)`` for a task: the run's settings resolved from the form, the task's
    log written where the UI reads it, and errors a retry cannot cure failing the task at once."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from cmrops import dag_tasks
    from cmrops.airflow_hooks import task_log

    context = get_current_context()
    with task_log(context):
        try:
            cfg = dag_tasks.resolve(PROJECT, dict(context["params"]))
            return fn(cfg, context)
        except dag_tasks.Skip as e:
            # Airflow's own log line says only "Skipping task.": the reason goes in first
            logging.getLogger("cmrops.task").info("skipped: %s", e)
            raise AirflowSkipException(str(e)) from e
        except dag_tasks.RunError as e:
            if not e.retryable:
                raise AirflowFailException(str(e)) from e
            raise


def _stage(name: str) -> dict[str, Any]:
    from cmrops import dag_tasks

    def run(cfg: Any, context: Any) -> dict[str, Any]:
        return dag_tasks.run_stage_task(cfg, name, str(context["run_id"]))

    return _body(run)


def _opt(default: Any, kind: str, description: str, **schema: Any) -> Param:
    """An optional form field: blank or null means the default."""
    return Param(default, type=["null", kind], description=description, **schema)


@dag(
    dag_id="cmrops_pipeline",
    schedule=_schedule(SCHEDULE),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=_minutes(SCHEDULE.run_timeout_minutes),
    deadline=_deadline(SCHEDULE),
    on_failure_callback=on_failure,
    tags=["cmrops", "dataset", "hashing"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "params_file": _opt("params.yaml", "string", "relative to the project"),
        "synthetic_n": _opt(
            None, "integer", f"the synthetic set's size (a trial run; >= {MIN_SYNTHETIC_N})",
            minimum=MIN_SYNTHETIC_N,
        ),
        "stop_after": _opt("evaluate", "string", "last stage to run", enum=[None, *STAGES]),
        "storage_root": _opt(None, "string", "s3://bucket/prefix (blank: the project folder)"),
        "dvc_remote": _opt(None, "string", "DVC remote of the push (blank: the default)"),
        "push": _opt(True, "boolean", "dvc push at the end"),
    },
)
def cmrops_pipeline() -> None:
    @task(outlets=[RAW], doc_md="Gather the samples of every source in params (`data/raw`).")
    def collect() -> dict[str, Any]:
        return _stage("collect")

    @task.short_circuit(
        doc_md="Skip every later task when nothing changed since the last release (`dvc status` "
        "against `dvc.lock`); trials always go on."
    )
    def changes(_: dict[str, Any]) -> dict[str, Any] | bool:
        from cmrops import dag_tasks

        return _body(lambda cfg, _ctx: dag_tasks.changes(cfg) or False)

    @task(doc_md="Plan preprocess's shards: groups of whole shards, one per mapped task.")
    def preprocess_plan(_: object) -> list[list[int]]:
        from cmrops.pipeline import preprocess_plan as plan

        return _body(lambda cfg, _ctx: plan(cfg.work, str(cfg.params), cfg.root))

    @task(
        max_active_tis_per_dagrun=4,
        doc_md="Decode, hash and embed one group of shards (a no-op for recorded shards).",
    )
    def preprocess_shards(indices: list[int]) -> list[int]:
        from cmrops import dag_tasks

        return _body(lambda cfg, ctx: dag_tasks.preprocess_shards(cfg, indices, str(ctx["run_id"])))

    @task(doc_md="Merge the shards into `data/interim` (redoing any that went missing).")
    def preprocess(_: list[list[int]]) -> dict[str, Any]:
        return _stage("preprocess")

    @task(doc_md="Fit the shared image-text space (`data/align`) and score every pair.")
    def align(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("align")

    @task(doc_md="Labels: source, keywords, zero-shot, manual and reviewed (`data/labelled`).")
    def label(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("label")

    @task(outlets=[CLEAN], doc_md="Quarantine duplicates, broken pairs and off-topic samples.")
    def clean(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("clean")

    @task(outlets=[SPLIT], doc_md="Group-aware, stratified query/database/train sets, audited.")
    def split(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("split")

    @task(
        pool="gpu",
        outlets=[MODELS],
        doc_md="Train every hashing model and write its codes (pool `gpu`).",
        **({"queue": GPU_QUEUE} if GPU_QUEUE else {}),
    )
    def train(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("train")

    @task(outlets=[RETRIEVAL], doc_md="Retrieval metrics, plots and the protocol card.")
    def evaluate(_: dict[str, Any]) -> dict[str, Any]:
        return _stage("evaluate")

    @task(
        outlets=[VERSIONED],
        trigger_rule=TriggerRule.NONE_FAILED,
        doc_md="`dvc commit` + `dvc push` + a release record (skipped for trials).",
    )
    def version() -> dict[str, Any]:
        from cmrops import dag_tasks

        return _body(lambda cfg, ctx: dag_tasks.version(cfg, str(ctx["run_id"])))

    raw = collect()
    groups = preprocess_plan(changes(raw))
    mapped = preprocess_shards.expand(indices=groups)
    interim = preprocess(mapped)
    done = evaluate(train(split(clean(label(align(interim))))))
    done >> version()


cmrops_pipeline()

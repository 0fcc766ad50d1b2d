"""
### cmrops pipeline

Builds an image-text retrieval dataset and hashing models, one task per stage:

`collect` → `changes` → `preprocess` (planned into shards, one **mapped** task per group of
shards of about `preprocess.task_rows` samples, then merged) → `align` → `label` → `clean` →
`split` → `train` (pool `gpu`; Celery queue `$CMROPS_GPU_QUEUE` when set) → `evaluate` → `version`
(`dvc commit` + `dvc push` to the DVC remote).

**Schedule** (`schedule:` in params.yaml, read when the DAG file is parsed): a cron (`cron`, UTC;
daily by default) and/or asset URIs (`assets`) whose updates also start a run. Every run is
incremental: `collect` rescans the sources (stored images are not copied again); `changes`
compares the workspace with the last versioned run (`dvc.lock`, `dvc status`) and, when nothing is
new, skips every later task (a fast no-op). Otherwise only the new samples are decoded and embedded
(preprocess keeps known samples in their shards), deduplicated against the whole set (the Rust
index), and placed in sets while every earlier sample keeps its own (`split.anchor: previous`).

Every task runs the same code with the same arguments as `dvc repro` (`cmrops.pipeline`, which
calls `cmrops.cli.main`), so both produce the same bytes. Tasks are idempotent: a retry or a rerun
of a finished task rewrites the same files (stages write atomically and skip recorded work).
Each stage task appends a line to the run log (`.cmrops/runs.jsonl`, not versioned) under this
DAG run's `run_id`, and pushes the stage's metrics to `$CMROPS_PUSHGATEWAY_URL` when it is set.

**Params** (trigger form): `params_file` (relative to the project), `storage_root` (empty: the
project folder; or `s3://bucket/prefix` - endpoint and credentials from the workers' environment:
`CMROPS_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), `synthetic_n` (override the
size of the built-in synthetic set), `stop_after` (last stage to run; later ones are skipped),
`dvc_remote` (empty: the default remote) and `push`. A run with another params file or an
override is not versioned (`version` skips: dvc.lock would pair the outputs with params.yaml).
Empty `storage_root` / `dvc_remote` fall back to `$CMROPS_STORAGE_ROOT` / `$CMROPS_DVC_REMOTE`
(set by `deploy/docker-compose.yml`).

The project folder is `$CMROPS_PROJECT`, else the folder above `dags/`.

**Assets** updated (schedule downstream DAGs on them): `cmrops://dataset/raw`,
`cmrops://dataset/clean`, `cmrops://dataset/split`, `cmrops://models/hashing`,
`cmrops://metrics/retrieval`, `cmrops://dataset/versioned`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

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

PROJECT = os.environ.get("CMROPS_PROJECT") or str(Path(__file__).resolve().parents[1])
STAGE_ORDER = ["collect", "preprocess", "align", "label", "clean", "split", "train", "evaluate"]

RAW = Asset("cmrops://dataset/raw")
CLEAN = Asset("cmrops://dataset/clean")
SPLIT = Asset("cmrops://dataset/split")
MODELS = Asset("cmrops://models/hashing")
RETRIEVAL = Asset("cmrops://metrics/retrieval")
VERSIONED = Asset("cmrops://dataset/versioned")


def schedule_from_params(params_file: Path) -> object:
    """The DAG's schedule from the ``schedule:`` section of ``params_file`` (a small file read at
    parse time: Airflow needs the schedule before any run exists; nothing else is read here).

    ``cron`` (UTC, default daily at 03:00; null: no timed runs) and ``assets`` (URIs whose updates
    also start a run); Airflow itself validates both."""
    import yaml

    known = {"cron": "0 3 * * *", "assets": []}
    data = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    section = (data or {}).get("schedule") or {}
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"{params_file}:schedule: unknown key(s) {unknown}; allowed: cron, assets")
    cron = section.get("cron", known["cron"])
    assets = [Asset(str(uri)) for uri in section.get("assets") or []]
    timetable = CronTriggerTimetable(str(cron), timezone="UTC") if cron else None
    if timetable is not None and assets:
        return AssetOrTimeSchedule(timetable=timetable, assets=AssetAny(*assets))
    if assets:
        return AssetAny(*assets)
    return timetable


#: Celery queue of the ``gpu``-pool task (train) when ``$CMROPS_GPU_QUEUE`` is set where DAGs are
#: parsed (GPU machines serve it: ``airflow celery worker --queues default,gpu``); unset, it runs
#: on Airflow's default queue. Executors without queues ignore it.
GPU_QUEUE = os.environ.get("CMROPS_GPU_QUEUE") or None

DEFAULT_ARGS = {
    "owner": "cmrops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def _read_config() -> dict[str, str]:
    """The run's settings from the trigger form (resolved in the worker, not at parse time)."""
    from airflow.sdk import get_current_context

    from cmrops.pipeline import effective_params

    p = get_current_context()["params"]
    project = Path(PROJECT)
    params_file = project / p["params_file"]
    overrides = {"synthetic_n": p.get("synthetic_n")}
    return {
        "work": str(project),
        "params": effective_params(params_file, overrides),
        "root": p.get("storage_root") or os.environ.get("CMROPS_STORAGE_ROOT", ""),
        "stop_after": p["stop_after"],
    }


def _config() -> dict[str, str]:
    """The run's settings; a bad params file fails the task at once (no retries)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return _read_config()
    except (ValueError, FileNotFoundError) as e:
        raise AirflowFailException(str(e)) from e


def _use_airflow_run_id() -> None:
    """The stage's run-log line (and its Pushgateway push, when ``$CMROPS_PUSHGATEWAY_URL`` is
    set) carries this DAG run's ``run_id``."""
    from airflow.sdk import get_current_context

    from cmrops.runlog import RUN_ID_ENV

    os.environ[RUN_ID_ENV] = str(get_current_context()["run_id"])


def _run(name: str) -> dict[str, str]:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from cmrops.pipeline import StageError, run_stage

    cfg = _config()
    if STAGE_ORDER.index(name) > STAGE_ORDER.index(cfg["stop_after"]):
        raise AirflowSkipException(f"{name} is after stop_after={cfg['stop_after']}")
    _use_airflow_run_id()
    try:
        run_stage(name, cfg["work"], cfg["params"], cfg["root"] or None)
    except StageError as e:
        if not e.retryable:  # bad input or configuration: retrying cannot help
            raise AirflowFailException(str(e)) from e
        raise
    return {"stage": name, "work": cfg["work"]}


@dag(
    dag_id="cmrops_pipeline",
    schedule=schedule_from_params(Path(PROJECT) / "params.yaml"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["cmrops", "dataset", "hashing"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params={
        "params_file": Param("params.yaml", type="string", description="relative to the project"),
        "storage_root": Param(
            "", type="string", description="empty = project folder; or s3://bucket/prefix"
        ),
        "synthetic_n": Param(
            None, type=["null", "integer"], minimum=1, description="override synthetic size"
        ),
        "stop_after": Param("evaluate", enum=STAGE_ORDER, description="last stage to run"),
        "dvc_remote": Param("", type="string", description="empty = the default DVC remote"),
        "push": Param(True, type="boolean", description="dvc push at the end"),
    },
)
def cmrops_pipeline() -> None:
    @task(outlets=[RAW])
    def collect() -> dict[str, str]:
        return _run("collect")

    @task.short_circuit
    def changes(_: dict[str, str]) -> dict[str, object] | bool:
        """Skip every later task when nothing changed since the last versioned run."""
        import logging

        from cmrops.versioning import changes_since_versioned

        cfg = _config()
        if Path(cfg["params"]).resolve() != (Path(cfg["work"]) / "params.yaml").resolve():
            return {"checked": False}  # an override run is never versioned: always run it
        if cfg["root"]:
            return {"checked": False}  # outputs live in the storage root, not this workspace
        c = changes_since_versioned(cfg["work"])
        logging.getLogger("cmrops.changes").info("changes: %s", c.describe())
        if c.up_to_date:
            return False
        return {"checked": True, "new_samples": c.new_samples, "stages": list(c.stages)}

    @task
    def preprocess_plan(_: object) -> list[list[int]]:
        from cmrops.pipeline import preprocess_plan as plan

        cfg = _config()
        return plan(cfg["work"], cfg["params"], cfg["root"] or None)

    @task(max_active_tis_per_dagrun=4)
    def preprocess_shards(indices: list[int]) -> list[int]:
        from cmrops.pipeline import preprocess_shards as run_group

        cfg = _config()
        return run_group(indices, cfg["work"], cfg["params"], cfg["root"] or None)

    @task
    def preprocess(_: list[list[int]]) -> dict[str, str]:
        # every shard is recorded now: this only merges them (and redoes any that went missing)
        return _run("preprocess")

    @task
    def align(_: dict[str, str]) -> dict[str, str]:
        return _run("align")

    @task
    def label(_: dict[str, str]) -> dict[str, str]:
        return _run("label")

    @task(outlets=[CLEAN])
    def clean(_: dict[str, str]) -> dict[str, str]:
        return _run("clean")

    @task(outlets=[SPLIT])
    def split(_: dict[str, str]) -> dict[str, str]:
        return _run("split")

    @task(pool="gpu", outlets=[MODELS], **({"queue": GPU_QUEUE} if GPU_QUEUE else {}))
    def train(_: dict[str, str]) -> dict[str, str]:
        return _run("train")

    @task(outlets=[RETRIEVAL])
    def evaluate(_: dict[str, str]) -> dict[str, str]:
        return _run("evaluate")

    @task(outlets=[VERSIONED], trigger_rule=TriggerRule.NONE_FAILED)
    def version() -> dict[str, str]:
        """Record this run's outputs in DVC (dvc.lock + cache) and push them to the remote."""
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowSkipException

        from cmrops import storage, versioning
        from cmrops.pipeline import STAGES

        cfg = _config()
        p = get_current_context()["params"]
        if Path(cfg["params"]).resolve() != (Path(cfg["work"]) / "params.yaml").resolve():
            # dvc.yaml's commands read params.yaml: dvc.lock would pair these outputs with
            # params they were not made with
            raise AirflowSkipException(
                f"not versioned: this run used {cfg['params']}, not params.yaml (overrides are "
                "for trying things; edit params.yaml for a versioned run)"
            )
        if cfg["root"]:  # DVC versions the project's workspace: bring the outputs there
            storage.pull(cfg["root"], [o for s in STAGES.values() for o in s.outputs], cfg["work"])
        import yaml

        declared = yaml.safe_load((Path(cfg["work"]) / "dvc.yaml").read_text())["stages"]
        ran = STAGE_ORDER[: STAGE_ORDER.index(cfg["stop_after"]) + 1]
        last = [s for s in ran if s in declared][-1]  # the last stage dvc.yaml declares
        versioning.dvc(["commit", "--force", "--with-deps", last], cfg["work"])
        remote = p["dvc_remote"] or os.environ.get("CMROPS_DVC_REMOTE") or None
        pushed = versioning.push(cfg["work"], remote) if p["push"] else ""
        return {"committed": last, "pushed": pushed[-500:]}

    raw = collect()
    groups = preprocess_plan(changes(raw))
    mapped = preprocess_shards.expand(indices=groups)
    interim = preprocess(mapped)
    done = evaluate(train(split(clean(label(align(interim))))))
    done >> version()


cmrops_pipeline()

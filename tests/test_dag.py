"""The DAG files: they load without errors, follow the house rules, lint clean, import nothing
heavy at parse time, and run the same command lines as dvc.yaml."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "cmrops_pipeline" in dagbag.dags


def test_every_dag_has_tags_retries_owner_and_no_catchup(dagbag) -> None:
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.doc_md, dag_id
        for t in dag.tasks:
            assert t.retries >= 1, (dag_id, t.task_id)
            assert t.owner, (dag_id, t.task_id)
            assert t.owner != "airflow", (dag_id, t.task_id)


def test_pipeline_shape(dagbag) -> None:
    dag = dagbag.dags["cmrops_pipeline"]
    tasks = {t.task_id: t for t in dag.tasks}
    stages = ["collect", "preprocess", "align", "label", "clean", "split", "train", "evaluate"]
    assert set(stages) | {"changes", "preprocess_plan", "preprocess_shards", "version"} == set(
        tasks
    )
    assert tasks["train"].pool == "gpu"
    assert all(tasks[s].pool != "gpu" for s in stages if s != "train")
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(tasks["preprocess_shards"], MappedOperator)  # dynamic task mapping
    assert tasks["collect"].retry_exponential_backoff
    for a, b in itertools.pairwise(stages):
        assert a in tasks[b].upstream_task_ids or b == "preprocess", (a, b)
    assert "collect" in tasks["changes"].upstream_task_ids
    assert "changes" in tasks["preprocess_plan"].upstream_task_ids
    assert "preprocess_shards" in tasks["preprocess"].upstream_task_ids
    assert "evaluate" in tasks["version"].upstream_task_ids
    uris = {o.uri for t in dag.tasks for o in getattr(t, "outlets", [])}
    assert {"cmrops://dataset/clean", "cmrops://metrics/retrieval"} <= uris
    assert set(dag.params.keys()) >= {"params_file", "storage_root", "synthetic_n", "stop_after"}


def test_ruff_airflow3_rules_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run(
        [str(ruff), "check", "--select", "AIR3", "--output-format", "concise", str(DAGS)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nothing_heavy_is_imported_at_parse_time(tmp_path: Path) -> None:
    code = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(json.dumps(sorted(m for m in ('torch', 'numpy', 'pyarrow', 'pandas', 'dvc', "
        "'cmrops._core', 'cmrops.pipeline', 'transformers', 'boto3', 's3fs') "
        "if m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "cmrops_pipeline.py")],
        capture_output=True,
        text=True,
        env={"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_dag_tasks_run_the_dvc_yaml_commands() -> None:
    """One table (cmrops.stage_table) gives the DAG's argv; dvc.yaml must spell the same."""
    from cmrops.stage_table import STAGES, argv

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in STAGES:
        assert name in spec, f"dvc.yaml lacks stage {name}"
        assert spec[name]["cmd"].split() == ["cmrops", *argv(name)], name
    for name, stage in STAGES.items():
        declared = [next(iter(o)) if isinstance(o, dict) else o for o in spec[name].get("outs", [])]
        declared += [next(iter(o)) for o in spec[name].get("metrics", [])]
        declared += [next(iter(o)) for o in spec[name].get("plots", [])]
        for out in stage.outputs:  # every shipped output is declared ...
            assert any(d == out or d.startswith(out + "/") for d in declared), (name, out)
        for d in declared:  # ... and every declared one is shipped (pushed to the storage root)
            assert any(d == out or d.startswith(out + "/") for out in stage.outputs), (name, d)


def test_effective_params_override(tmp_path: Path) -> None:
    from cmrops.pipeline import effective_params

    src = tmp_path / "params.yaml"
    src.write_text((REPO / "params.yaml").read_text())
    assert effective_params(src, {"synthetic_n": None}) == str(src)
    out = Path(effective_params(src, {"synthetic_n": 50}))
    assert out.parent == src.parent
    assert out.name.startswith(".params-")
    assert yaml.safe_load(out.read_text())["collect"]["sources"][0]["n"] == 50
    assert effective_params(src, {"synthetic_n": 50}) == str(out)  # idempotent
    with pytest.raises(ValueError, match="unknown"):
        effective_params(src, {"nope": 1})


def test_the_schedule_comes_from_params(dagbag, tmp_path: Path) -> None:
    """params.yaml's schedule: a daily cron by default; with assets, runs on either."""
    from airflow.sdk import CronTriggerTimetable

    timetable = dagbag.dags["cmrops_pipeline"].timetable
    assert isinstance(timetable, CronTriggerTimetable)
    assert timetable.expression == "0 3 * * *"

    def parse(section: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "params.yaml").write_text(section)
        code = (
            "import runpy, sys; ns = runpy.run_path(sys.argv[1]); "
            "dag = ns['cmrops_pipeline'](); "
            "print(type(dag.timetable).__name__)"
        )
        env = {
            "AIRFLOW_HOME": str(tmp_path),
            "CMROPS_PROJECT": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            [sys.executable, "-c", code, str(DAGS / "cmrops_pipeline.py")],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip

    both = parse('schedule:\n  cron: "*/30 * * * *"\n  assets: ["cmrops://sources/incoming"]\n')
    assert both.returncode == 0, both.stderr[-2000:]
    assert both.stdout.split()[0] == "AssetOrTimeSchedule"
    only_assets = parse('schedule:\n  cron: null\n  assets: ["cmrops://sources/incoming"]\n')
    assert only_assets.returncode == 0, only_assets.stderr[-2000:]
    assert "Asset" in only_assets.stdout
    bad = parse("schedule:\n  crn: daily\n")
    assert bad.returncode != 0
    assert "schedule: unknown key(s) crn" in bad.stderr
    typo = parse("schedul:\n  cron: null\n")  # a misspelled section is refused too
    assert typo.returncode != 0
    assert "'schedul' (did you mean 'schedule'?)" in typo.stderr


def test_the_trigger_form_submits_with_its_defaults(dagbag) -> None:
    """The Airflow UI marks a field required unless its schema type allows null, and turns a
    blank text field into null: every field must be optional, and the defaults must validate."""
    dag = dagbag.dags["cmrops_pipeline"]
    for name, param in dag.params.items():
        kinds = param.schema.get("type")
        assert isinstance(kinds, list), name
        assert "null" in kinds, f"{name} would be required in the trigger form"
        param.resolve(None)  # a blank field validates
        param.resolve(param.value)  # so does the default
    assert dag.params.get_param("synthetic_n").schema["minimum"] >= 8  # split's minimum


def test_every_task_has_a_doc_a_timeout_and_the_failure_hook(dagbag) -> None:
    from cmrops.airflow_hooks import on_failure

    dag = dagbag.dags["cmrops_pipeline"]
    assert dag.dagrun_timeout is not None
    assert on_failure in (dag.on_failure_callback if isinstance(dag.on_failure_callback, list)
                          else [dag.on_failure_callback])  # fmt: skip
    for t in dag.tasks:
        assert t.doc_md, t.task_id
        assert t.execution_timeout is not None, t.task_id
        callbacks = t.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert on_failure in callbacks, t.task_id


def test_unpausing_waits_for_the_next_cron_slot(dagbag) -> None:
    """A DAG unpaused after today's slot does not fire it at once: no start_date (with one,
    catchup=False runs the latest past slot) and a zero run_immediately window."""
    import datetime as dt

    dag = dagbag.dags["cmrops_pipeline"]
    assert dag.start_date is None
    assert dag.timetable.run_immediately == dt.timedelta(0)

"""The whole DAG through Airflow itself (``airflow dags test``, SQLite metadata DB in a temporary
AIRFLOW_HOME) on a tiny synthetic set: the same bytes as ``dvc repro`` on the same params, the
outputs committed and pushed to the DVC remote, a SIGKILL mid-run recovered by a rerun, and a
failed task reported as a failed run (non-zero exit)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cmrops import versioning
from tests.test_dvc_support import (
    dvc_outs,
    env,
    make_project,
    reproduced_project,
    sh,
    tiny_params,
    tree_hashes,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a busy 2-core machine
FINISHED = re.compile(r"DagRun Finished: dag_id=cmrops_pipeline.*?state=(\w+)")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    sh(["airflow", "db", "migrate"], home, env=_env(home, home), timeout=300)
    sh(["airflow", "pools", "set", "gpu", "1", "GPU steps"], home, env=_env(home, home))
    return home


def _env(home: Path, project: Path) -> dict[str, str]:
    e = env()
    e.update(
        AIRFLOW_HOME=str(home),
        CMROPS_PROJECT=str(project),
        AIRFLOW__CORE__DAGS_FOLDER=str(project / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="120",
    )
    return e


def _dags_test_cmd(conf: dict[str, object]) -> list[str]:
    return ["airflow", "dags", "test", "cmrops_pipeline", "-c", json.dumps(conf)]


def dags_test(project: Path, home: Path, conf: dict[str, object]) -> tuple[int, str, str]:
    proc = sh(_dags_test_cmd(conf), project, check=False, env=_env(home, project), timeout=1800)
    out = proc.stdout + proc.stderr
    states = FINISHED.findall(out)
    return proc.returncode, states[-1] if states else "", out


def test_dags_test_matches_dvc_repro_and_versions(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference = reproduced_project(tmp_path_factory.getbasetemp())
    project = make_project(tmp_path_factory.mktemp("af") / "p", tiny_params())
    rc, state, out = dags_test(project, airflow_home, {})
    assert (rc, state) == (0, "success"), out[-5000:]
    outs = dvc_outs(reference)
    assert "models" in outs
    assert "metrics/retrieval.json" in outs
    # byte for byte: every table, array, weight, code and JSON file
    got, want = tree_hashes(project, outs), tree_hashes(reference, outs)
    assert got.keys() == want.keys()
    assert {k for k in want if got[k] != want[k]} == set()
    # the last task recorded the run in DVC and pushed it to the default (local) remote
    status = versioning.dvc(["status", "--json"], project).stdout
    assert json.loads(status or "{}") == {}, status
    cloud = versioning.dvc(["status", "--cloud", "--json"], project).stdout
    assert json.loads(cloud or "{}") == {}, cloud
    assert (project / ".dvc-remote" / "files").is_dir()
    # a rerun of the finished DAG changes nothing
    rc, state, out = dags_test(project, airflow_home, {"push": False})
    assert (rc, state) == (0, "success"), out[-5000:]
    assert tree_hashes(project, outs) == want


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference = reproduced_project(tmp_path_factory.getbasetemp())
    project = make_project(tmp_path_factory.mktemp("kill") / "p", tiny_params())
    proc = subprocess.Popen(
        _dags_test_cmd({"push": False}),
        cwd=project,
        env=_env(airflow_home, project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    shards = project / "data/interim/shards"

    def embedded() -> int:  # shards done (the mapped tasks run in any order)
        return len(list(shards.glob("shard-*.embed.json"))) if shards.is_dir() else 0

    deadline = time.monotonic() + 900
    while not embedded() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 1 <= embedded() < 3  # killed between shards: some done, some not, nothing merged
    assert not (project / "data/interim/samples.parquet").exists()
    rc, state, out = dags_test(project, airflow_home, {"push": False})
    assert (rc, state) == (0, "success"), out[-5000:]
    outs = dvc_outs(reference)
    assert tree_hashes(project, outs) == tree_hashes(reference, outs)
    leftovers = [p for p in (project / "data").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_failed_task_fails_the_run(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = make_project(tmp_path_factory.mktemp("fail") / "p", tiny_params())
    rc, state, out = dags_test(project, airflow_home, {"params_file": "missing.yaml"})
    assert rc != 0
    assert state == "failed", out[-3000:]
    assert "params file not found" in out


def test_overridden_params_run_as_a_trial_in_their_own_workspace(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cmrops.dag_tasks import TRIALS, WORKSPACE_MARKER

    project = make_project(tmp_path_factory.mktemp("override") / "p", tiny_params())
    conf = {"synthetic_n": 40, "stop_after": "collect"}  # the form's minimum
    rc, state, out = dags_test(project, airflow_home, conf)
    assert (rc, state) == (0, "success"), out[-5000:]
    (ws,) = (project / TRIALS).iterdir()
    assert (ws / WORKSPACE_MARKER).is_file()
    raw = json.loads((ws / "data/raw/metrics.json").read_text())
    assert raw["inputs"] == 40  # the override reached the stage, in the trial's workspace
    assert not (project / "data").exists()  # the project's own outputs were never touched
    assert "not versioned: trial" in out  # version skipped ...
    assert not (project / "dvc.lock").exists()  # ... so dvc.lock never pairs them with params.yaml
    assert len(list(project.glob(".params-*.yaml"))) == 1

"""The README's main command (scripts/main_job.sh, `make run`) end to end in a copy of the
project, on the repository's own params: Airflow in a project-local home, the DAG through
`airflow dags test`, DVC versioning, the summary and the UI hints; and on a tiny set, a failed
task makes it exit non-zero."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_dvc_support import REPO, env, make_project, sh, tiny_params

# Budgets hold on a busy 2-core machine (a CI run once took 39 minutes in all): each command may
# take several times its idle duration before the test calls it a failure.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _project(base: Path) -> Path:
    project = make_project(base / "p", tiny_params())
    shutil.copytree(REPO / "scripts", project / "scripts")
    return project


def _run(project: Path, **extra: str):
    e = env()
    for k in list(e):
        if k.startswith(("AIRFLOW", "CMROPS_")):
            del e[k]
    e.update(CMROPS_SKIP_SETUP="1", **extra)  # the test session's .venv is the set-up
    return sh(["bash", "scripts/main_job.sh"], project, check=False, env=e, timeout=2400)


def test_airflow_commands_share_one_process_and_the_first_failure_ends_them(
    tmp_path: Path,
) -> None:
    """cmrops.airflow_cli: --init migrates a new SQLite home and makes the gpu pool, then the
    given commands run in order; a command that fails gives its exit status and stops the rest."""
    import subprocess
    import sys

    home = tmp_path / "airflow"
    e = env()
    for k in list(e):
        if k.startswith("AIRFLOW"):
            del e[k]
    e.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "no-dags"),
    )

    def cli(*commands: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cmrops.airflow_cli", *commands],
            env=e, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    ok = cli("--init", "pools get gpu -o json")
    assert ok.returncode == 0, ok.stderr[-3000:]
    pools = json.loads(ok.stdout.strip().splitlines()[-1])
    assert [(p["pool"], int(p["slots"])) for p in pools] == [("gpu", 1)]
    failed = cli("pools get no-such-pool", "pools set never 1 made")
    assert failed.returncode != 0
    assert "airflow pools get no-such-pool: exit status" in failed.stderr
    listed = cli("pools list -o json")
    assert "never" not in listed.stdout  # the command after the failure did not run


def test_main_job_exits_non_zero_when_a_task_fails(tmp_path: Path) -> None:
    project = _project(tmp_path)
    proc = _run(project, CMROPS_PARAMS="no-such-params.yaml")
    assert proc.returncode != 0
    assert "FAILED: the DAG run ended in state 'failed'" in proc.stderr


def test_the_readme_main_job_runs_on_the_default_params(tmp_path: Path) -> None:
    """`make run` itself, unmodified params.yaml (about 2,000 synthetic samples), in a copy."""
    project = make_project(tmp_path / "p")  # the repository's own params.yaml
    shutil.copytree(REPO / "scripts", project / "scripts")
    shutil.copy(REPO / "Makefile", project / "Makefile")
    e = env()
    for k in list(e):
        if k.startswith(("AIRFLOW", "CMROPS_")):
            del e[k]
    e.update(CMROPS_SKIP_SETUP="1")
    proc = sh(["make", "run"], project, check=False, env=e, timeout=3300)
    out = proc.stdout
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert (project / ".airflow" / "airflow.db").is_file()  # project-local SQLite home
    for text in (
        "samples: 2000 in,",
        "cleaning on the planted defects: precision",
        "leaking near-duplicate pairs: 0",
        "mAP (hash codes)",
        "image_to_text",
        "dcmh-16",
        "every output is committed",
        "airflow standalone",
        "http://127.0.0.1:8080",
        "make dashboard",
    ):
        assert text in out, text
    assert (project / "dvc.lock").is_file()
    cloud = sh(["dvc", "status", "--cloud", "--json"], project).stdout
    assert json.loads(cloud or "{}") == {}

"""The Airflow UI's doors, through a real deployment (API server, scheduler, DAG processor,
LocalExecutor) and the same REST calls the UI makes:

* the main job's run (``airflow dags test``, as ``make run`` does it) is in the grid with its
  task logs readable through the UI's log endpoint;
* the DAG starts paused, and unpausing it after today's cron slot fires nothing;
* the trigger form, submitted as it comes (every field at its default, blanks as null), runs
  the versioned pipeline - a no-op here, nothing changed since the main job's release;
* the form with a small ``synthetic_n`` runs a trial end to end in its own workspace and leaves
  the project's release, outputs and run log exactly as they were.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from cmrops import releases, runlog
from cmrops.dag_tasks import TRIALS
from tests.airflow_cluster import AirflowCluster
from tests.test_dag_run import _dags_test_cmd, _env
from tests.test_dvc_support import dvc_outs, make_project, sh, tiny_params, tree_hashes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a busy 2-core machine
DAG = "cmrops_pipeline"


def _form_conf(details: dict[str, Any]) -> dict[str, Any]:
    """What the trigger form sends when submitted untouched: every param at its default, a
    blank text field as null (the UI's own rule)."""
    conf = {}
    for name, p in details["params"].items():
        v = p.get("value")
        conf[name] = None if v == "" else v
    return conf


def _required_in_form(details: dict[str, Any]) -> list[str]:
    """The fields the UI marks required (``*``): a schema type without null."""
    out = []
    for name, p in details["params"].items():
        kind = (p.get("schema") or {}).get("type")
        if kind and (not isinstance(kind, list) or "null" not in kind):
            out.append(name)
    return out


def _log_text(af: AirflowCluster, run_id: str, task_id: str, try_number: int = 1) -> str:
    path = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
    body = af.api("GET", path + "?full_content=true")
    content = body.get("content") if isinstance(body, dict) else body
    if isinstance(content, list):
        return "\n".join(
            str(c.get("event", "")) if isinstance(c, dict) else str(c) for c in content
        )
    return str(content)


def test_the_ui_doors(tmp_path_factory: pytest.TempPathFactory) -> None:
    project = make_project(tmp_path_factory.mktemp("ui") / "p", tiny_params(80))
    home = tmp_path_factory.mktemp("af-ui")
    e = _env(home, project)
    sh(["airflow", "db", "migrate"], home, env=e, timeout=600)
    sh(["airflow", "pools", "set", "gpu", "1", "GPU steps"], home, env=e)

    # 1. the main job's way: airflow dags test, in-process
    main = subprocess.run(_dags_test_cmd({}), cwd=project, env=e, capture_output=True,
                          text=True, timeout=2400)  # fmt: skip
    assert main.returncode == 0, (main.stdout + main.stderr)[-5000:]
    (release,) = releases.list_releases(project, include_remote=False)
    outs = dvc_outs(project)
    versioned = tree_hashes(project, outs)
    runs_before = runlog.read_runs(project)

    with AirflowCluster(home, project, "LocalExecutor") as af:
        details = af.api("GET", f"/dags/{DAG}/details")
        assert details["is_paused"] is True  # dags_are_paused_at_creation
        (made,) = af.runs()
        made_id = str(made["dag_run_id"])
        # the main job's task logs, read as the UI reads them
        collect_log = _log_text(af, made_id, "collect")
        assert "collect:" in collect_log, collect_log[-2000:]
        version_log = _log_text(af, made_id, "version")
        assert release.id in version_log or "release" in version_log, version_log[-2000:]

        # unpausing after today's slot fires nothing (run_immediately: false)
        af.unpause()
        time.sleep(20)
        assert [r["run_type"] for r in af.runs()] == ["manual"]

        # 2. the form as it comes: every field optional, defaults submitted
        assert _required_in_form(details) == []
        conf = _form_conf(details)
        assert conf["params_file"] == "params.yaml"
        assert conf["synthetic_n"] is None
        plain = af.trigger(conf)
        assert af.wait(plain, timeout=1800) == "success", af.describe(plain)
        states = af.task_states(plain)
        assert states["changes"] == "success"
        assert states["version"] == "skipped"  # nothing new since the main job's release
        assert "changes:" in _log_text(af, plain, "changes")

        # 3. the form with a small synthetic_n: a trial, end to end, in its own workspace
        trial = af.trigger({**conf, "synthetic_n": 40})
        assert af.wait(trial, timeout=2400) == "success", af.describe(trial)
        states = af.task_states(trial)
        assert states["evaluate"] == "success", states
        assert states["version"] == "skipped", states
        assert "not versioned: trial" in _log_text(af, trial, "version")
        af.pause()

    workspaces = list((project / TRIALS).iterdir())
    assert len(workspaces) == 1
    ws = workspaces[0]
    retrieval = json.loads((ws / "metrics/retrieval.json").read_text())
    assert retrieval["models"]
    raw = json.loads((ws / "data/raw/metrics.json").read_text())
    assert raw["inputs"] == 40
    split = json.loads((ws / "metrics/split.json").read_text())
    assert split["sizes_chosen"]["query"] < 200  # sizes scaled to the small set
    # the project: the same release, the same bytes, no trial record in its run log
    assert [r.id for r in releases.list_releases(project, include_remote=False)] == [release.id]
    assert tree_hashes(project, outs) == versioned
    trial_records = [r for r in runlog.read_runs(project) if r.run_id == trial]
    assert trial_records == []
    assert len(runlog.read_runs(project)) >= len(runs_before)
    assert {r.run_id for r in runlog.read_runs(ws)} == {trial}

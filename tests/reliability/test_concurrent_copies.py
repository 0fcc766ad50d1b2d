"""Two copies of one task at once - what Airflow does when it loses a running task's heartbeat
and starts it again - and two dvc commands at once (two copies of the DAG's last task).

Two copies of a stage on one workspace: the second waits for the first (a stage lock per output
folder, released by the kernel however the holder ends), then runs; both succeed and the outputs
equal an uninterrupted single run byte for byte. Two dvc commands through cmrops wait for DVC's
repository lock instead of failing; plain ``dvc`` without ``--wait-for-lock`` either waits its
few seconds or fails with DVC's own clear message, never corrupting the cache or dvc.lock."""

from __future__ import annotations

import json
import sys

from tests.reliability.conftest import COLLECT, PREPROCESS, Built
from tests.reliability.harness import CMROPS, copy_project, fingerprint, run, start


def _two_at_once(built: Built, args: list[str], tmp_path) -> list[str]:
    project = copy_project(built.path, tmp_path / "p", drop=built.outputs)
    procs = [start([CMROPS, *args], project) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    assert fingerprint(project, built.outputs) == built.reference
    return [err for _, err in results]


def test_two_collects_on_one_workspace(raw_project, tmp_path):
    logs = _two_at_once(raw_project, COLLECT, tmp_path)
    waited = sum("another `cmrops collect` writes data/raw" in e for e in logs)
    assert waited <= 1
    print(f"{waited} of 2 collects waited for the other")  # 0: they did not overlap


def test_two_preprocesses_on_one_workspace(interim_project, tmp_path):
    logs = _two_at_once(interim_project, PREPROCESS, tmp_path)
    waited = sum("another `cmrops preprocess` writes data/interim" in e for e in logs)
    assert waited <= 1
    print(f"{waited} of 2 preprocesses waited for the other")


#: The DAG's last task (``versioning.commit_and_push``), for the one stage this project ran.
_COMMIT_AND_PUSH = (
    "from cmrops import versioning; versioning.commit('.', ['collect']); "
    "print(versioning.push('.'))"
)


def test_two_dvc_commits_and_pushes_at_once(dvc_project, tmp_path):
    project = copy_project(dvc_project, tmp_path / "p")
    procs = [start([sys.executable, "-c", _COMMIT_AND_PUSH], project) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]  # the second waited for DVC's lock
    missing = run([sys.executable, "-m", "dvc", "status", "--cloud", "--json"], project)
    assert json.loads(missing.stdout or "{}") == {}, missing.stdout  # the remote holds it all
    status = run([sys.executable, "-m", "dvc", "status", "--json", "collect"], project)
    assert json.loads(status.stdout or "{}") == {}, status.stdout  # dvc.lock matches the outputs
    # plain dvc, no --wait-for-lock: serialised by its short retry, or DVC's own clear error
    procs = [
        start([sys.executable, "-m", "dvc", "commit", "--force", "collect"], project)
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 or "Unable to acquire lock" in out + err, out + err
    status = run([sys.executable, "-m", "dvc", "status", "--json", "collect"], project)
    assert json.loads(status.stdout or "{}") == {}, status.stdout

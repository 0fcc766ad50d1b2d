"""The run log (``cmrops/runlog.py``): records survive a SIGKILL mid-write (a torn last line is
skipped, the next record starts on a fresh line), ``CMROPS_RUN_ID`` is honoured, failures are
recorded and re-raised, the data version follows ``dvc.lock``, and every stage command run
through the CLI is recorded without a trace of it in the stage's outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cmrops import cli, runlog
from tests.test_dvc_support import git_commit, sh, tiny_params


def _run(stage: str, **counts: int) -> runlog.StageRun:
    return runlog.StageRun(
        run_id="r1", stage=stage, started_at=1.0, finished_at=3.5, duration_s=2.5,
        status="success", data_version=None, counts=dict(counts), metrics={"map/m/d": 0.5},
    )  # fmt: skip


def test_no_log_reads_as_empty(tmp_path: Path) -> None:
    assert runlog.read_runs(tmp_path) == []
    assert runlog.read_runs(tmp_path / "missing") == []
    assert runlog.data_version(tmp_path) is None


def test_round_trip_in_order(tmp_path: Path) -> None:
    first, second = _run("collect", kept=3), _run("clean", kept=2)
    runlog.append_run(tmp_path, first)
    path = runlog.append_run(tmp_path, second)
    assert path == tmp_path / runlog.RUNLOG_PATH
    assert runlog.read_runs(tmp_path) == [first, second]
    assert path.read_text().count("\n") == 2


def test_torn_and_foreign_lines_are_skipped_and_the_next_record_survives(tmp_path: Path) -> None:
    runlog.append_run(tmp_path, _run("collect"))
    path = tmp_path / runlog.RUNLOG_PATH
    whole = runlog.StageRun.to_json(_run("label"))
    with path.open("ab") as fh:  # a writer killed half-way through its line
        fh.write(whole.encode()[: len(whole) // 2])
    assert [r.stage for r in runlog.read_runs(tmp_path)] == ["collect"]
    runlog.append_run(tmp_path, _run("split"))  # not glued onto the torn fragment
    with path.open("ab") as fh:
        fh.write(b'{"run_id": "x", "stage": "clean", "status": "maybe"}\n[1, 2]\n\n')
    assert [r.stage for r in runlog.read_runs(tmp_path)] == ["collect", "split"]


def test_sigkill_while_appending_loses_only_the_record_in_flight(tmp_path: Path) -> None:
    writer = (
        "import sys, itertools\n"
        "from cmrops import runlog\n"
        "for i in itertools.count():\n"
        "    runlog.append_run(sys.argv[1], runlog.StageRun(str(i), 'collect', 0.0, 1.0, 1.0,\n"
        "        'success', None, {'in': i}, {}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)])
    path = tmp_path / runlog.RUNLOG_PATH
    deadline = time.monotonic() + 60
    while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    runs = runlog.read_runs(tmp_path)
    lines = [ln for ln in path.read_bytes().split(b"\n") if ln]
    assert len(runs) >= len(lines) - 1 > 50  # at most the last line is torn
    assert [r.counts["in"] for r in runs] == list(range(len(runs)))  # none lost, none doubled
    runlog.append_run(tmp_path, _run("split"))
    assert runlog.read_runs(tmp_path)[-1].stage == "split"


def test_run_id_from_the_environment_else_one_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runlog.RUN_ID_ENV, "scheduled__2026-01-01T00:00:00+00:00")
    with runlog.record_stage(tmp_path, "collect"):
        pass
    assert runlog.read_runs(tmp_path)[-1].run_id == "scheduled__2026-01-01T00:00:00+00:00"
    monkeypatch.delenv(runlog.RUN_ID_ENV)
    generated = runlog.current_run_id()
    assert generated.startswith("local__")
    assert runlog.current_run_id() == generated


def test_failures_are_recorded_and_re_raised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), runlog.record_stage(tmp_path, "train"):
        raise RuntimeError("boom")
    with runlog.record_stage(tmp_path, "split", lambda: ({"in": 5}, {})) as attempt:
        attempt.fail()  # a non-zero exit code, no exception
    with runlog.record_stage(tmp_path, "label", lambda: ({"in": 5}, {"x": 0.25})):
        time.sleep(0.05)
    train, split, label = runlog.read_runs(tmp_path)
    assert (train.status, split.status, label.status) == ("failed", "failed", "success")
    assert split.counts == {}  # a failed run's files are not its figures
    assert (label.counts, label.metrics) == ({"in": 5}, {"x": 0.25})
    assert label.duration_s >= 0.05
    assert label.finished_at == pytest.approx(label.started_at + label.duration_s, abs=2e-3)


def test_data_version_follows_dvc_lock_and_git(tmp_path: Path) -> None:
    lock = {"schema": "2.0", "stages": {"collect": {"outs": [{"path": "data/raw", "md5": "a"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    v1 = runlog.data_version(tmp_path)
    assert v1 is not None
    assert len(v1) == 12
    lock["stages"]["collect"]["outs"][0]["md5"] = "b"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    v2 = runlog.data_version(tmp_path)
    assert v2 != v1
    sh(["git", "init", "-q"], tmp_path)
    git_commit(tmp_path, "lock")
    sha = sh(["git", "rev-parse", "--short", "HEAD"], tmp_path).stdout.strip()
    assert runlog.data_version(tmp_path) == f"{v2}+g{sha}"
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert runlog.data_version(tmp_path) == f"g{sha}"  # a broken lock never breaks a stage


def test_cli_stage_commands_are_recorded_and_leave_no_trace_in_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(12), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(runlog.RUN_ID_ENV, "manual__runlog-test")
    monkeypatch.delenv("CMROPS_PUSHGATEWAY_URL", raising=False)
    assert cli.main(["collect", "--params", "params.yaml", "--out", "data/raw"]) == 0
    assert cli.main(["collect", "--params", "missing.yaml", "--out", "data/raw"]) == 2
    ok, failed = runlog.read_runs(tmp_path)
    raw = json.loads((tmp_path / "data/raw/metrics.json").read_text())
    assert (ok.stage, ok.status, ok.run_id) == ("collect", "success", "manual__runlog-test")
    assert ok.counts == {
        "in": raw["inputs"], "kept": raw["kept"], "quarantined": raw["quarantined"],
        **{f"quarantined/{k}": v for k, v in raw["quarantined_by_reason"].items()},
    }  # fmt: skip
    assert ok.counts["in"] == ok.counts["kept"] + ok.counts["quarantined"] == 12
    assert (failed.stage, failed.status, failed.counts) == ("collect", "failed", {})
    # the run id and times live only in the run log, never in a stage output
    for f in (tmp_path / "data").rglob("*"):
        if f.is_file():
            assert b"runlog-test" not in f.read_bytes(), f
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cmrops", "data", "params.yaml"]

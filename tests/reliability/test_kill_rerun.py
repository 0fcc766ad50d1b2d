"""SIGKILL a stage at about 10, 50 and 90 % of an uninterrupted run's wall time, run the same
command again, and compare every output byte for byte with the uninterrupted run's.

The kill goes to the stage's main process only - its worker processes are orphaned mid-shard,
the harshest case: they must exit on their own (within a minute; they check every 0.5 s) - and
the rerun starts then, as an Airflow retry would. What this proves: no partial file is mistaken
for a finished one or versioned as part of an output, resume state is never trusted when stale,
and a resumed run writes exactly what an uninterrupted one writes (0 samples lost or
duplicated)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.reliability.conftest import COLLECT, PREPROCESS, TRAIN, Built
from tests.reliability.harness import CMROPS, cmrops, copy_project, fingerprint, start

FRACTIONS = (0.1, 0.5, 0.9)


def _kill_and_rerun(built: Built, args: list[str], fraction: float, tmp_path) -> str:
    project = copy_project(built.path, tmp_path / "p", drop=built.outputs)
    proc = start([CMROPS, *args], project)
    deadline = time.monotonic() + fraction * built.seconds
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    landed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)  # the main process only: its workers are orphaned
    proc.wait(timeout=60)
    gone = time.monotonic() + 60  # ... and must not outlive it (they would wait forever)
    while _alive(proc.pid) and time.monotonic() < gone:
        time.sleep(0.1)
    if _alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("worker processes outlived their killed parent by 60 s")
    proc.communicate(timeout=60)
    rerun = cmrops(*args, cwd=project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    assert fingerprint(project, built.outputs) == built.reference
    # say where the kill landed: a run that ended before its kill proves less
    return f"killed at {fraction:.0%} of {built.seconds:.1f} s: {'mid-run' if landed else 'done'}"


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_collect_killed_then_rerun_is_byte_identical(raw_project, fraction, tmp_path):
    print(_kill_and_rerun(raw_project, COLLECT, fraction, tmp_path))


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_preprocess_killed_then_rerun_is_byte_identical(interim_project, fraction, tmp_path):
    print(_kill_and_rerun(interim_project, PREPROCESS, fraction, tmp_path))


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_train_killed_then_resumed_is_byte_identical(train_project, fraction, tmp_path):
    print(_kill_and_rerun(train_project, TRAIN, fraction, tmp_path))

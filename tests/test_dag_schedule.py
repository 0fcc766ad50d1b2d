"""Scheduled, incremental runs through Airflow itself: a real scheduler (LocalExecutor, API server,
DAG processor) runs the DAG on the cron of params.yaml. Data is added between two scheduled runs:
the second decodes and embeds only the new samples, searches only them for near-duplicates
against the whole set, moves no earlier sample between sets and versions the result with DVC; a
third scheduled run with nothing new skips every stage after ``changes``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmrops import versioning
from cmrops.sources import scenes
from tests.airflow_cluster import AirflowCluster
from tests.test_dvc_support import make_project, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a busy 2-core machine
AFTER_CHANGES = (
    "preprocess_plan", "preprocess", "align", "label", "clean", "split", "train", "evaluate",
)  # fmt: skip


def _add_incoming(folder: Path, lo: int, hi: int) -> None:
    """Rendered shape scenes ``lo..hi-1`` with their captions (folder source layout), made in a
    hidden staging folder (collect skips dot names) and moved into place in one rename, so a run
    sees all of them or none."""
    staging = folder / f".staging-{lo}"
    staging.mkdir(parents=True)
    for i in range(lo, hi):
        rng = np.random.default_rng(10_000 + i)
        scene = scenes.sample_scene(rng, 96, 128, 0.0)
        (staging / f"in{i:03d}.png").write_bytes(scenes.encode(scenes.render(scene), "PNG"))
        (staging / f"in{i:03d}.txt").write_text("\n".join(scenes.captions(scene, rng, 2)) + "\n")
    staging.rename(folder / f"batch-{lo}")


def _finished(af: AirflowCluster, seen: set[str], deadline: float) -> dict[str, object]:
    """The oldest run not in ``seen``, once it has finished successfully (added to ``seen``)."""
    while time.monotonic() < deadline:
        fresh = [r for r in af.runs() if r["dag_run_id"] not in seen]
        if fresh:
            run_id = str(fresh[0]["dag_run_id"])
            state = af.wait(run_id, timeout=max(60.0, deadline - time.monotonic()))
            assert state == "success", af.describe(run_id)
            seen.add(run_id)
            return af.run(run_id)
        time.sleep(3)
    raise AssertionError(f"no new run in time\n{af.log_tails()}")


def _idle(af: AirflowCluster, deadline: float) -> set[str]:
    """Wait for a moment with no run queued or running (the cron ticks every minute, a run with
    nothing new takes seconds); every run id so far."""
    while time.monotonic() < deadline:
        runs = af.runs()
        if all(r["state"] in ("success", "failed") for r in runs):
            return {str(r["dag_run_id"]) for r in runs}
        time.sleep(1)
    raise AssertionError(f"runs still active\n{af.log_tails()}")


def _records(shards: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("shard-*.json")}


def _ids(table: Path) -> set[str]:
    return set(pq.read_table(table, columns=["sample_id"])["sample_id"].to_pylist())


def _assignments(project: Path) -> dict[str, tuple[str, bool]]:
    t = pq.read_table(project / "data/split/assignments.parquet").to_pydict()
    return {s: (sp, tr) for s, sp, tr in zip(t["sample_id"], t["split"], t["in_train"],
                                             strict=True)}  # fmt: skip


def test_scheduled_runs_are_incremental(tmp_path_factory: pytest.TempPathFactory) -> None:
    params = tiny_params(60)
    params["collect"]["sources"].append(
        {"name": "incoming", "kind": "folder", "path": "data/incoming"}
    )
    params["schedule"] = {"cron": "* * * * *", "assets": []}  # every minute, for the test
    params["train"].update(methods=["dcmh"], bits=[16], epochs=2)
    project = make_project(tmp_path_factory.mktemp("sched") / "p", params)
    _add_incoming(project / "data/incoming", 0, 10)
    shards = project / "data/interim/shards"

    env = {"AIRFLOW__CORE__PARALLELISM": "4"}  # LocalExecutor worker processes
    home = tmp_path_factory.mktemp("af-sched")
    with AirflowCluster(home, project, "LocalExecutor", env=env) as af:
        deadline = time.monotonic() + 2400
        af.unpause()
        first = _finished(af, set(), deadline)
        seen = _idle(af, deadline)  # ticks during the first run queued no-op runs: let them end
        lock1 = (project / "dvc.lock").read_text()
        records = _records(shards)
        plan1 = pq.read_table(shards / "plan.parquet").to_pydict()
        before = _assignments(project)
        raw1 = _ids(project / "data/raw/samples.parquet")
        interim1 = _ids(project / "data/interim/samples.parquet")

        _add_incoming(project / "data/incoming", 10, 16)  # six new images arrive
        # the next runs: the first to see them does the work, the one after it has nothing new
        # (a run the scheduler made just before the images landed may be a no-op before both)
        second = third = None
        while third is None:
            r = _finished(af, seen, deadline)
            worked = af.task_states(str(r["dag_run_id"]))["preprocess_plan"] == "success"
            if second is None and worked:
                second = r
            elif second is not None:
                assert not worked, af.describe(str(r["dag_run_id"]))
                third = r
        af.pause()
        no_op = af.task_states(str(third["dag_run_id"]))

    assert {first["run_type"], second["run_type"], third["run_type"]} == {"scheduled"}
    raw2 = _ids(project / "data/raw/samples.parquet")
    new = raw2 - raw1
    assert len(new) == 6
    assert raw1 <= raw2

    # preprocess touched only the new samples: earlier shard records untouched, the new ones
    # (appended shards) hold exactly the new samples
    after = _records(shards)
    assert {k: after[k] for k in records} == records
    plan2 = pq.read_table(shards / "plan.parquet").to_pydict()
    old_shard = dict(zip(plan1["sample_id"], plan1["shard"], strict=True))
    placed = dict(zip(plan2["sample_id"], plan2["shard"], strict=True))
    assert {s: placed[s] for s in old_shard} == old_shard
    new_shards = {placed[s] for s in new}
    assert min(new_shards) > max(old_shard.values())
    assert {s for s, sh in placed.items() if sh in new_shards} == new
    assert set(after) - set(records) == {
        f"shard-{i:05d}.{kind}.json" for i in new_shards for kind in ("decode", "embed")
    }

    # clean searched only the new samples against the index of all of them
    search = json.loads((project / "data/clean/throughput.json").read_text())["near_image_search"]
    interim2 = _ids(project / "data/interim/samples.parquet")
    assert interim1 <= interim2
    assert search["cache"] == "used"
    assert search["queried"] == len(interim2 - interim1) > 0
    assert search["index_size"] == len(interim2)

    # the split moved no earlier sample; the new ones that survived cleaning were placed
    # (an earlier sample may leave the release: the alignment the mismatch rule scores with is
    # refitted on the grown data set, so a borderline pair can be judged again - never
    # silently: it is in clean's quarantine with its reason, and the release counts it)
    now = _assignments(project)
    assert {s: now[s] for s in before if s in now} == {s: before[s] for s in now if s in before}
    left = set(before) - set(now)
    quarantine = pq.read_table(project / "data/clean/quarantine.parquet").to_pydict()
    reason = dict(zip(quarantine["sample_id"], quarantine["reason"], strict=True))
    assert all(reason.get(s) for s in left), {s: reason.get(s) for s in left}
    release = json.loads((project / "data/split/release.json").read_text())
    assert release["anchored_samples"] == len(before) - len(left)
    assert release["left"] == len(left)
    assert sorted(release["left_samples"]) == sorted(left)[:50]
    assert release["moved"] == 0
    assert release["new_samples"] == len(set(now) - set(before)) > 0

    # versioned: dvc.lock records the new outputs, everything is in the remote
    assert (project / "dvc.lock").read_text() != lock1
    assert versioning.changes_since_versioned(project).up_to_date
    cloud = versioning.dvc(["status", "--cloud", "--json"], project).stdout
    assert json.loads(cloud or "{}") == {}

    # the run with nothing new: collect and changes ran, every later task was skipped
    assert no_op["collect"] == no_op["changes"] == "success", no_op
    assert {no_op[t] for t in AFTER_CHANGES} == {"skipped"}, no_op
    assert no_op["version"] == "skipped", no_op

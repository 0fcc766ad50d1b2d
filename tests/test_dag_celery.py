"""The DAG beyond one process: CeleryExecutor, Redis broker, two Celery workers that share no
disk (each its own AIRFLOW_HOME and its own copy of the project), the storage root on a loopback
S3 server (moto). The outputs in S3 are byte for byte those of ``dvc repro`` on the same params;
a worker SIGKILLed in the middle of a preprocess shard loses and duplicates nothing.

Every stage task pulls its inputs from ``s3://`` into the worker's own work folder and pushes its
outputs back; ``version`` runs on a worker too: it pulls every output into that worker's copy and
``dvc commit``s it there (``push: false`` here: the DVC remote is not what is under test)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmrops import storage, versioning
from cmrops.pipeline import STAGES
from tests.airflow_cluster import TERMINAL, AirflowCluster, ClusterError, Worker, free_port
from tests.test_dvc_support import (
    dvc_outs,
    make_project,
    reproduced_project,
    tiny_params,
    tree_hashes,
)

pytestmark = pytest.mark.slow
BUCKET = "cmrops-celery"
OUTPUTS = sorted({o for s in STAGES.values() for o in s.outputs})


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback; the environment that reaches it (tasks and this process)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "CMROPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        storage.ensure_bucket(BUCKET)
        yield env
    server.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reproduced_project(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def celery_loads() -> None:
    """What the scheduler imports first: fail here, not in its log (celery 5.7 breaks it)."""
    try:
        import airflow.providers.celery.executors.celery_executor  # noqa: F401
    except ImportError as e:
        pytest.fail(f"the CeleryExecutor does not load ({e}): install requirements/lock.txt")


@pytest.fixture(scope="module")
def cluster(
    celery_loads: None,
    s3: dict[str, str],
    reference: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowCluster]:
    """Scheduler, DAG processor and API server with their own copy of the project; the tests
    start their workers. ``CMROPS_GPU_QUEUE=gpu``: train goes to the ``gpu`` queue."""
    base = tmp_path_factory.mktemp("celery")
    control = make_project(base / "control", tiny_params())
    af = AirflowCluster(
        base / "airflow", control, executor="CeleryExecutor", env={**s3, "CMROPS_GPU_QUEUE": "gpu"}
    )
    with af:
        af.unpause()
        yield af


def _workers(af: AirflowCluster, base: Path, queues: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """Replace the cluster's workers by fresh ones (name -> queues), each with a new copy of the
    project in its own folder; name -> project."""
    for name, alive in af.alive().items():
        if name.startswith("worker-") and alive:
            af.stop_worker(name.removeprefix("worker-"))
    projects = {}
    for name, qs in queues.items():
        projects[name] = make_project(base / f"worker-{name}" / "p", tiny_params())
        af.start_worker(Worker(name, projects[name], queues=qs), wait=False)
    af.wait_workers()
    return projects


def _pulled(root: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    storage.pull(root, OUTPUTS, dest)
    return dest


def _s3_keys(root: str) -> list[str]:
    r = storage.parse_root(root)
    return list(storage._s3fs().find(r.join("")))


def _assert_same_bytes(got_root: Path, reference: Path) -> None:
    outs = dvc_outs(reference)
    assert "models" in outs
    assert "metrics/retrieval.json" in outs
    got, want = tree_hashes(got_root, outs), tree_hashes(reference, outs)
    assert len(want) > 50
    assert sorted(set(want) - set(got)) == [], "missing in S3"
    assert sorted(set(got) - set(want)) == [], "extra in S3"
    assert sorted(k for k in want if got[k] != want[k]) == [], "different bytes"


def _assert_accounted(folder: Path) -> None:
    """inputs = kept + quarantined at every stage, and once more end to end, by table rows."""
    import pyarrow.parquet as pq

    def rows(rel: str) -> list[str]:
        return list(pq.read_table(folder / rel, columns=["sample_id"]).column(0).to_pylist())

    def metrics(rel: str) -> dict[str, Any]:
        return dict(json.loads((folder / rel).read_text()))

    raw, interim = metrics("data/raw/metrics.json"), metrics("data/interim/metrics.json")
    quality = metrics("metrics/quality.json")
    for m in (raw, quality):
        assert m["inputs"] == m["kept"] + m["quarantined"], m
    assert interim["in"] == interim["kept"] + interim["quarantined"] == raw["kept"]
    assert quality["inputs"] == interim["kept"]
    kept = rows("data/clean/samples.parquet")
    assert len(kept) == len(set(kept)) == quality["kept"]  # nothing duplicated
    interim_ids = rows("data/interim/samples.parquet")
    assert len(interim_ids) == len(set(interim_ids)) == interim["kept"]
    quarantined = [
        rows(f"data/{s}/quarantine.parquet") for s in ("raw", "interim", "clean")
    ]  # fmt: skip
    assert [len(q) for q in quarantined] == [
        raw["quarantined"], interim["quarantined"], quality["quarantined"]
    ]  # fmt: skip
    assert len(kept) + sum(map(len, quarantined)) == raw["inputs"]  # nothing lost


def _no_tmp(paths: list[str]) -> list[str]:
    return [p for p in paths if p.endswith(".tmp") or ".tmp" in Path(p).suffixes]


def test_celery_two_workers_no_shared_disk_same_bytes_as_dvc_repro(
    cluster: AirflowCluster, reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("run")
    projects = _workers(cluster, base, {"a": ("default", "gpu"), "b": ("default",)})
    root = f"s3://{BUCKET}/run"
    t0 = time.monotonic()
    run_id = cluster.trigger({"storage_root": root, "push": False})
    state = cluster.wait(run_id)
    assert state == "success", cluster.describe(run_id)
    print(f"celery run: {time.monotonic() - t0:.0f}s")

    tis = cluster.task_instances(run_id)
    assert {ti["state"] for ti in tis} == {"success"}, cluster.describe(run_id)
    host = {(ti["task_id"], ti["map_index"]): ti["hostname"] for ti in tis}
    shards = {h for (t, _), h in host.items() if t == "preprocess_shards"}
    assert sum(t == "preprocess_shards" for t, _ in host) == 3  # 80 samples, 32 a shard
    assert shards == {"a", "b"}, cluster.describe(run_id)  # the mapped shards ran on both
    assert host[("train", -1)] == "a"  # only "a" serves the gpu queue
    assert set(host.values()) == {"a", "b"}

    got = _pulled(root, base / "from-s3")
    _assert_same_bytes(got, reference)
    _assert_accounted(got)
    assert _no_tmp(_s3_keys(root)) == []
    # version ran on one worker: that worker's copy now holds every output, committed to DVC
    versioned = projects[host[("version", -1)]]
    status = versioning.dvc(["status", "--json"], versioned).stdout
    assert json.loads(status or "{}") == {}, status
    assert (versioned / "dvc.lock").is_file()
    # the other worker never saw version's outputs: no shared disk
    other = projects[({"a", "b"} - {host[("version", -1)]}).pop()]
    assert not (other / "dvc.lock").exists()


def test_celery_worker_sigkilled_mid_shard_loses_and_duplicates_nothing(
    cluster: AirflowCluster, reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("kill")
    projects = _workers(cluster, base, {"c": ("default", "gpu"), "d": ("default", "gpu")})
    root = f"s3://{BUCKET}/kill"
    t0 = time.monotonic()
    run_id = cluster.trigger({"storage_root": root, "push": False})

    # wait for a preprocess shard to be running on a worker, then for its decoded rows to appear
    # in that worker's folder (embedding comes next), and SIGKILL the worker right then
    deadline = time.monotonic() + 900
    victim: dict[str, Any] = {}
    while not victim:
        if time.monotonic() > deadline or cluster.run(run_id)["state"] in TERMINAL:
            raise ClusterError(f"no shard seen running\n{cluster.describe(run_id)}")
        for ti in cluster.task_instances(run_id):
            running = ti["task_id"] == "preprocess_shards" and ti["state"] == "running"
            if running and ti["hostname"] in projects:
                victim = ti
                break
        else:
            time.sleep(0.3)
    killed = str(victim["hostname"])
    shard = projects[killed] / "data/interim/shards" / f"shard-{victim['map_index']:05d}"
    decoded = Path(f"{shard}.samples.parquet")
    while not decoded.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.kill_worker(killed)
    mid_shard = not Path(f"{shard}.embed.json").exists()
    survivor = ({"c", "d"} - {killed}).pop()

    state = cluster.wait(run_id)
    assert state == "success", cluster.describe(run_id)
    print(f"celery run, {killed} killed (decoded, not embedded: {mid_shard}): "
          f"{time.monotonic() - t0:.0f}s")  # fmt: skip

    # the killed try failed (no heartbeat) and a retry on the other worker finished the shard
    tries = cluster.tries(run_id, "preprocess_shards", victim["map_index"])
    assert [t["hostname"] for t in tries][:: len(tries) - 1] == [killed, survivor], tries
    assert tries[0]["state"] != "success", tries
    assert tries[-1]["state"] == "success", tries
    tis = cluster.task_instances(run_id)
    assert {ti["state"] for ti in tis} == {"success"}, cluster.describe(run_id)
    assert sum(ti["task_id"] == "preprocess_shards" for ti in tis) == 3

    got = _pulled(root, base / "from-s3")
    _assert_same_bytes(got, reference)
    _assert_accounted(got)
    assert _no_tmp(_s3_keys(root)) == []
    survived = [str(p) for p in (projects[survivor] / "data").rglob("*")]
    assert _no_tmp(survived) == []

"""Prometheus metrics for real: ``cmrops metrics serve`` as a subprocess scraped over HTTP, a real
Pushgateway (``/usr/bin/prometheus-pushgateway``) pushed to by stage commands, by ``cmrops
metrics push`` and by the Airflow DAG, every exposition parsed with ``prometheus_client``'s text
parser and compared with the run's metrics files and run log."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cmrops import runlog
from tests.test_dvc_support import BIN, env, make_project, reproduced_project, sh, tiny_params

PUSHGATEWAY = Path("/usr/bin/prometheus-pushgateway")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    hits = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


def cmrops(*args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 300):
    e = env()
    e.update(extra_env or {})
    return subprocess.run(
        [str(BIN / "cmrops"), *args], cwd=cwd, env=e, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def collect_project(base: Path, n: int = 12) -> Path:
    """A folder with params for a tiny synthetic collect (the cheapest real stage)."""
    base.mkdir(parents=True, exist_ok=True)
    p = tiny_params(n)
    (base / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return base


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


class Server:
    """``cmrops metrics serve`` in a subprocess on an ephemeral port."""

    def __init__(self, project: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "cmrops"), "metrics", "serve", "--project", str(project), "--port", "0",
             *extra],
            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "serving ... on http://127.0.0.1:PORT/metrics"
        assert "/metrics" in line, (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.url = line.split(" on ")[-1].strip()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, err


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny ``dvc repro`` project (shared with the DVC and DAG tests): its stages
    ran through ``cmrops <stage>``, so its run log holds one record per stage. Read only."""
    return reproduced_project(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    if not PUSHGATEWAY.is_file():
        pytest.fail(
            f"{PUSHGATEWAY} not found: run scripts/system_packages.sh (installs the Debian "
            "package prometheus-pushgateway)"
        )
    port = free_port()
    log = (tmp_path_factory.mktemp("pushgateway") / "log.txt").open("w")
    proc = subprocess.Popen(
        [str(PUSHGATEWAY), f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, f"pushgateway exited: see {log.name}"
        assert time.monotonic() < deadline, "pushgateway did not become ready in 30 s"
        time.sleep(0.1)
    yield url, proc
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


# --------------------------------------------------------------------------- serve


def test_served_metrics_equal_the_run_files(project: Path) -> None:
    server = Server(project)
    try:
        got = scrape(server.url)
    finally:
        rc, err = server.stop()
    assert rc == 0, err  # SIGTERM: a clean shutdown

    raw = read_json(project / "data/raw/metrics.json")
    interim = read_json(project / "data/interim/metrics.json")
    labelled = read_json(project / "data/labelled/metrics.json")
    quality = read_json(project / "metrics/quality.json")
    split = read_json(project / "metrics/split.json")
    retrieval = read_json(project / "metrics/retrieval.json")

    for stage, m, n_in in (
        ("collect", raw, raw["inputs"]),
        ("preprocess", interim, interim["in"]),
        ("clean", quality, quality["inputs"]),
    ):
        assert value(got, "cmrops_stage_samples", stage=stage, outcome="in") == n_in
        assert value(got, "cmrops_stage_samples", stage=stage, outcome="kept") == m["kept"]
        q = value(got, "cmrops_stage_samples", stage=stage, outcome="quarantined")
        assert q == m["quarantined"] == n_in - m["kept"]
        reasons = {
            s["reason"]: value(got, "cmrops_quarantined_samples", **s)
            for s in series(got, "cmrops_quarantined_samples")
            if s["stage"] == stage
        }
        assert reasons == m["quarantined_by_reason"]
    for stage, m in (("label", labelled), ("split", split)):
        assert value(got, "cmrops_stage_samples", stage=stage, outcome="kept") == m["samples"]
    for name, n in split["sizes"].items():
        assert value(got, "cmrops_split_samples", set=name) == n
    assert value(got, "cmrops_split_leaking_pairs") == split["leakage"]["total"]
    overall = quality["synthetic"]["overall"]
    assert value(got, "cmrops_clean_planted_defect_precision") == overall["precision"]
    assert value(got, "cmrops_clean_planted_defect_recall") == overall["recall"]

    assert retrieval["models"]
    for model, spec in retrieval["models"].items():
        for direction, d in spec["directions"].items():
            key = {"model": model, "direction": direction, "bits": str(spec["bits"])}
            key["protocol"], key["method"] = spec["protocol"], spec["method"]
            assert value(got, "cmrops_retrieval_map", **key, ranking="tie_aware") == pytest.approx(
                d["hash"]["map"], abs=1e-12
            )
            db = value(got, "cmrops_retrieval_map", **key, ranking="database_order")
            assert db == pytest.approx(d["hash"]["map_database_order"], abs=1e-12)
            fl = value(got, "cmrops_retrieval_map", **key, ranking="float")
            assert fl == pytest.approx(d["float"]["map"], abs=1e-12)
        for modality, h in spec["code_health"].items():
            bal = value(got, "cmrops_code_bit_balance_deviation", model=model, modality=modality)
            assert bal == pytest.approx(h["bit_balance"]["mean_abs_deviation"], abs=1e-12)
            const = value(got, "cmrops_code_constant_bits", model=model, modality=modality)
            assert const == h["bit_balance"]["constant_bits"]

    runs = runlog.read_runs(project)
    assert {r.stage for r in runs} >= {"collect", "preprocess", "clean", "train", "evaluate"}
    for r in runs:
        if r.status == "success":
            last = [x for x in runs if x.stage == r.stage and x.status == "success"][-1]
            dur = value(got, "cmrops_stage_duration_seconds", stage=r.stage)
            assert dur == pytest.approx(last.duration_s, abs=1e-9)
            ts = value(got, "cmrops_stage_last_success_timestamp_seconds", stage=r.stage)
            assert ts == pytest.approx(last.finished_at, abs=1e-3)
    n_eval = sum(r.stage == "evaluate" and r.status == "success" for r in runs)
    assert value(got, "cmrops_stage_runs_total", stage="evaluate", status="success") == n_eval
    info = series(got, "cmrops_info")
    assert info == [{"run_id": runs[-1].run_id, "data_version": runs[-1].data_version or ""}]
    # the run log's evaluate record carries the same headline mAP
    evaluate = [r for r in runs if r.stage == "evaluate"][-1]
    some_model = sorted(retrieval["models"])[0]
    want = retrieval["models"][some_model]["directions"]["image_to_text"]["hash"]["map"]
    assert evaluate.metrics[f"map/{some_model}/image_to_text"] == want


def test_a_running_server_shows_the_newest_run(tmp_path: Path) -> None:
    proj = collect_project(tmp_path / "p", n=12)
    server = Server(proj)
    try:
        empty = scrape(server.url)  # nothing ran yet: an empty but valid exposition
        assert not series(empty, "cmrops_stage_samples")
        for n in (12, 16):
            (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(n), sort_keys=False))
            done = cmrops("collect", "--params", "params.yaml", "--out", "data/raw", cwd=proj)
            assert done.returncode == 0, done.stderr
            got = scrape(server.url)
            assert value(got, "cmrops_stage_samples", stage="collect", outcome="in") == n
        assert value(got, "cmrops_stage_runs_total", stage="collect", status="success") == 2
    finally:
        rc, err = server.stop()
    assert rc == 0, err


def test_serve_refuses_bad_input_clearly(tmp_path: Path) -> None:
    gone = cmrops("metrics", "serve", "--project", str(tmp_path / "nope"), cwd=tmp_path)
    assert gone.returncode == 2
    assert "project folder" in gone.stderr
    assert "--project" in gone.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = cmrops("metrics", "serve", "--project", str(tmp_path), "--port", port, cwd=tmp_path)
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert "--port" in taken.stderr
    nogw = cmrops("metrics", "push", "--project", str(tmp_path), cwd=tmp_path)
    assert nogw.returncode == 2
    assert "CMROPS_PUSHGATEWAY_URL" in nogw.stderr


def test_binding_every_interface_warns_loudly(tmp_path: Path) -> None:
    server = Server(tmp_path, "--host", "0.0.0.0")
    rc, err = server.stop()
    assert rc == 0
    assert "WARNING" in err
    assert "every network interface" in err


# --------------------------------------------------------------------------- Pushgateway


def test_a_stage_pushes_its_metrics_to_the_gateway(
    gateway: tuple[str, Any], tmp_path: Path
) -> None:
    url, _ = gateway
    proj = collect_project(tmp_path / "pushproj")
    run_id = "manual__push-test"
    done = cmrops(
        "collect", "--params", "params.yaml", "--out", "data/raw", cwd=proj,
        extra_env={"CMROPS_PUSHGATEWAY_URL": url, runlog.RUN_ID_ENV: run_id},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pushed collect metrics" in done.stderr
    raw = read_json(proj / "data/raw/metrics.json")
    got = scrape(f"{url}/metrics")
    group = {"job": "cmrops", "instance": "pushproj", "stage": "collect"}
    for outcome, key in (("in", "inputs"), ("kept", "kept"), ("quarantined", "quarantined")):
        assert value(got, "cmrops_stage_samples", **group, outcome=outcome) == raw[key]
    info = [s for s in series(got, "cmrops_info") if s.get("instance") == "pushproj"]
    assert [s["run_id"] for s in info] == [run_id]
    (record,) = runlog.read_runs(proj)
    assert value(got, "cmrops_stage_duration_seconds", **group) == pytest.approx(record.duration_s)


def test_metrics_push_sends_every_stage(gateway: tuple[str, Any], project: Path) -> None:
    url, _ = gateway
    done = cmrops("metrics", "push", "--project", str(project), "--gateway", url, cwd=project)
    assert done.returncode == 0, done.stderr
    got = scrape(f"{url}/metrics")
    retrieval = read_json(project / "metrics/retrieval.json")
    group = {"job": "cmrops", "instance": project.name}
    for model, spec in retrieval["models"].items():
        for direction, d in spec["directions"].items():
            got_map = value(
                got, "cmrops_retrieval_map", **group, stage="evaluate", model=model,
                direction=direction, ranking="tie_aware",
            )  # fmt: skip
            assert got_map == pytest.approx(d["hash"]["map"], abs=1e-12)
    quality = read_json(project / "metrics/quality.json")
    kept = value(got, "cmrops_stage_samples", **group, stage="clean", outcome="kept")
    assert kept == quality["kept"]
    # one group per stage: a stage's group holds only that stage's series
    stages = {
        s["stage"] for s in series(got, "cmrops_stage_samples") if s.get("instance") == project.name
    }
    assert stages == {"collect", "preprocess", "label", "clean", "split"}


def test_a_gateway_that_is_down_or_hangs_never_fails_the_stage(
    gateway: tuple[str, subprocess.Popen], tmp_path: Path
) -> None:
    proj = collect_project(tmp_path / "down")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = cmrops(
        "collect", "--params", "params.yaml", "--out", "data/raw", cwd=proj,
        extra_env={"CMROPS_PUSHGATEWAY_URL": closed},
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "metrics not pushed" in down.stderr
    assert closed in down.stderr
    url, proc = gateway
    proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        t0 = time.monotonic()
        slow = cmrops(
            "collect", "--params", "params.yaml", "--out", "data/raw", cwd=proj,
            extra_env={"CMROPS_PUSHGATEWAY_URL": url, "CMROPS_PUSHGATEWAY_TIMEOUT": "1"},
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGCONT)
    assert slow.returncode == 0, slow.stderr
    assert "metrics not pushed" in slow.stderr
    assert "within 1s" in slow.stderr
    assert elapsed < 60
    assert [r.status for r in runlog.read_runs(proj)] == ["success", "success"]


@pytest.mark.slow
def test_the_dag_records_airflow_run_ids_and_pushes(
    gateway: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.test_dag_run import _dags_test_cmd, _env

    url, _ = gateway
    home = tmp_path_factory.mktemp("af-telemetry")
    proj = make_project(tmp_path_factory.mktemp("dagpush") / "dagproj", tiny_params(20))
    e = _env(home, proj)
    sh_env = {**e, "CMROPS_PUSHGATEWAY_URL": url}
    sh(["airflow", "db", "migrate"], home, env=e, timeout=300)
    sh(["airflow", "pools", "set", "gpu", "1", "GPU steps"], home, env=e)
    conf = {"stop_after": "collect", "push": False}
    done = subprocess.run(
        _dags_test_cmd(conf), cwd=proj, env=sh_env, capture_output=True, text=True, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    (record,) = runlog.read_runs(proj)
    assert (record.stage, record.status) == ("collect", "success")
    assert record.run_id.startswith("manual__")
    assert record.run_id in out
    got = scrape(f"{url}/metrics")
    info = [s for s in series(got, "cmrops_info") if s.get("instance") == "dagproj"]
    assert [s["run_id"] for s in info] == [record.run_id]
    raw = read_json(proj / "data/raw/metrics.json")
    kept = value(got, "cmrops_stage_samples", instance="dagproj", stage="collect", outcome="kept")
    assert kept == raw["kept"] == record.counts["kept"]
    shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- one run per gauge


def test_every_gauge_names_the_run_that_made_it(tmp_path: Path) -> None:
    """A stage rerun by a new run shows that run's id; the stages it did not rerun keep the id
    of the run that made their files - a scrape never mixes two runs silently."""
    proj = collect_project(tmp_path / "p", n=12)
    for run_id in ("run-a", "run-b"):
        done = cmrops("collect", "--params", "params.yaml", "--out", "data/raw", cwd=proj,
                      extra_env={runlog.RUN_ID_ENV: run_id})  # fmt: skip
        assert done.returncode == 0, done.stderr
    from prometheus_client import generate_latest

    from cmrops.telemetry.collector import registry_for

    text = generate_latest(registry_for(proj)).decode()
    got = {(s.name, frozenset(s.labels.items())): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    assert value(got, "cmrops_stage_samples", stage="collect", outcome="in", run_id="run-b") == 12
    assert not [s for s in series(got, "cmrops_stage_samples") if s["run_id"] == "run-a"]
    assert value(got, "cmrops_stage_duration_seconds", stage="collect", run_id="run-b") > 0


def test_a_stage_split_over_tasks_counts_all_its_work(tmp_path: Path) -> None:
    """preprocess in the DAG: mapped shard tasks, then the merge; its duration spans both."""

    def rec(stage: str, start: float, end: float, part: str | None = None) -> runlog.StageRun:
        return runlog.StageRun("dag-run-1", stage, start, end, end - start, "success", None,
                               part=part)  # fmt: skip

    for r in (
        rec("collect", 0.0, 10.0),
        rec("preprocess", 10.0, 200.0, part="shards"),
        rec("preprocess", 12.0, 240.0, part="shards"),
        rec("preprocess", 240.0, 241.0),  # the merge, the only record with a metrics file
    ):
        runlog.append_run(tmp_path, r)
    from prometheus_client import generate_latest

    from cmrops.telemetry.collector import registry_for

    text = generate_latest(registry_for(tmp_path)).decode()
    got = {(s.name, frozenset(s.labels.items())): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    assert value(got, "cmrops_stage_duration_seconds", stage="preprocess") == pytest.approx(231.0)
    assert value(got, "cmrops_stage_duration_seconds", stage="collect") == pytest.approx(10.0)
    assert value(got, "cmrops_stage_runs_total", stage="preprocess", status="success") == 1


def test_a_run_writing_elsewhere_never_touches_the_project(tmp_path: Path) -> None:
    """A failed (or any) stage run whose outputs go to another folder records there: the
    project's run log, and so its failure timestamp and alerts, stay as they were."""
    proj = collect_project(tmp_path / "p", n=12)
    (proj / "dvc.yaml").write_text("stages: {}\n")  # the project's root marker
    elsewhere = tmp_path / "scratch"
    bad = proj / "bad.yaml"  # (a params file above the outputs would make its folder the project)
    bad.write_text("collect:\n  sources: [{name: x, kind: folder, path: /no/such/folder}]\n")
    for params in (str(bad), "params.yaml"):
        cmrops("collect", "--params", params, "--out", str(elsewhere / "raw"), cwd=proj)
    assert runlog.read_runs(proj) == []
    assert {r.status for r in runlog.read_runs(elsewhere)} == {"failed", "success"}


def test_pair_recall_of_caption_data_is_exported(tmp_path: Path) -> None:
    """Pair relevance (caption data): each model's R@K per direction and ranking is a gauge."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cmrops.telemetry.collector import registry_for

    ranks = {"recall_at": {"1": 0.05, "5": 0.3, "10": 0.41}, "median_rank": 14.0}
    retrieval = {
        "stage": "evaluate",
        "relevance": {"mode": "pair"},
        "models": {"itq-64": {"method": "itq", "bits": 64, "protocol": "hashing", "directions": {
            "text_to_image": {"hash": {"map": 0.1, "pair_ranks": {"tie_aware": ranks}},
                              "float": {"map": 0.2, "pair_ranks": ranks}},
        }}},
    }  # fmt: skip
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "retrieval.json").write_text(json.dumps(retrieval))
    text = generate_latest(registry_for(tmp_path, ["evaluate"])).decode()
    got = {
        (s.labels["ranking"], s.labels["k"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "cmrops_retrieval_pair_recall"
    }
    assert got[("tie_aware", "10")] == 0.41
    assert got[("float", "1")] == 0.05
    assert len(got) == 6

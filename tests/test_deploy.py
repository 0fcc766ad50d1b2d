"""deploy/: the docker-compose stack cannot run here, so its YAML and settings are validated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REQUIRED = {
    "minio",
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "prometheus",
    "dashboard",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_services_present_and_dependencies_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= REQUIRED
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, (name, dep)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose["volumes"], (name, src)
            elif src.startswith("./"):
                assert (DEPLOY / src).exists(), (name, src)


def test_images_pinned_and_ports_on_loopback(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        assert image, name
        assert ":" in image, name
        assert not image.endswith(":latest"), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_airflow_settings(compose: dict[str, Any]) -> None:
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] in {"LocalExecutor", "CeleryExecutor"}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/cmrops/dags"
    assert env["CMROPS_STORAGE_ROOT"].startswith("s3://")
    assert env["CMROPS_S3_ENDPOINT_URL"] == "http://minio:9000"
    init = compose["services"]["airflow-init"]["command"]
    assert "db migrate" in init
    assert "pools set gpu" in init
    assert "storage check" in init
    for svc in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        dep = compose["services"][svc]["depends_on"]["airflow-init"]
        assert dep["condition"] == "service_completed_successfully"


def test_no_secret_is_committed(compose: dict[str, Any]) -> None:
    """Every password/key comes from ${VAR:?} (compose refuses to start without it)."""
    secretish = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY", re.IGNORECASE)

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if secretish.search(str(k)) and isinstance(v, str):
                    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", v), f"{where}.{k} = {v!r}"
                walk(v, f"{where}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(compose, "compose")
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#") and secretish.search(line.split("=")[0]):
            value = line.split("=", 1)[1]
            assert value in {"", "change-me", "change-me-at-least-8-chars"}, line


def test_prometheus_targets_are_compose_services(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = prom["scrape_configs"]
    assert {j["job_name"] for j in jobs} >= {"airflow", "cmrops"}
    for job in jobs:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                assert host == "localhost" or host in compose["services"], target
                assert port.isdigit()


def test_dockerfile_builds_from_the_lock_and_matching_airflow() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "requirements/lock.txt" in text
    lock = (DEPLOY.parent / "requirements" / "lock.txt").read_text()
    version = re.search(r"^apache-airflow==([\d.]+)", lock, re.MULTILINE)
    assert version, "apache-airflow not pinned in the lock"
    assert f"apache/airflow:{version.group(1)}-python3.11" in text


def test_stage_metrics_reach_prometheus_through_the_pushgateway(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = services["pushgateway"]
    assert gateway["image"].startswith("prom/pushgateway:v")
    assert "pushgateway" in services["prometheus"]["depends_on"]
    for svc in ("airflow-scheduler", "airflow-apiserver"):  # where the stage tasks run
        assert services[svc]["environment"]["CMROPS_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (cmrops,) = [j for j in prom["scrape_configs"] if j["job_name"] == "cmrops"]
    assert cmrops["honor_labels"] is True  # keep the pushed job/instance/stage labels
    assert cmrops["static_configs"] == [{"targets": ["pushgateway:9091"]}]

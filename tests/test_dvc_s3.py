"""DVC against a real S3-compatible server on loopback (moto server mode on a free port).

Push, then a fresh ``git clone`` + ``dvc pull`` reproduces every output bit for bit; the server
stopped in the middle of a push gives a clear error, and after a restart the retried push
completes with nothing missing."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from cmrops import storage, versioning
from tests.test_dvc_support import dvc_outs, env, reproduced_project, sh, tree_hashes

pytestmark = pytest.mark.slow
BUCKET = "cmrops-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = _free_port()
        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = Moto()
    server.start()
    monkeypatch.setenv("CMROPS_S3_ENDPOINT_URL", server.url)
    yield server
    with contextlib.suppress(Exception):  # stopped by the test already
        server.stop()


def _object_count(bucket: str) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    b = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.get(bucket)
    return len(b.keys) if b is not None else 0


def _use_s3_remote(project: Path, url: str, bucket: str = BUCKET) -> None:
    versioning.configure_remote(
        project, "minio", f"s3://{bucket}/dvc", endpoint=url, default=True, local=True
    )


def test_storage_check_s3_creates_bucket_and_reports_down(moto: Moto) -> None:
    res = storage.check(f"s3://{BUCKET}-check/prefix")
    assert res.ok, res.detail
    assert "created" in res.detail
    assert storage.check(f"s3://{BUCKET}-check/prefix").ok  # exists now
    moto.stop()
    res = storage.check(f"s3://{BUCKET}-check/prefix")
    assert not res.ok
    assert not res.reachable
    assert "not reachable" in res.detail


def test_cli_storage_check_on_dvc_remote(
    moto: Moto, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = reproduced_project(tmp_path_factory.getbasetemp())
    _use_s3_remote(project, moto.url)
    proc = sh(
        [sys.executable, "-m", "cmrops.cli", "storage", "check", "--repo", str(project)],
        project,
        env=env(),
    )
    assert "storage check OK" in proc.stdout, proc.stdout
    assert f"s3://{BUCKET}/dvc" in proc.stdout
    moto.stop()
    proc = sh(
        [sys.executable, "-m", "cmrops.cli", "storage", "check", "--repo", str(project)],
        project,
        check=False,
    )
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    versioning.dvc(["remote", "default", "--unset", "--local"], project, check=False)
    versioning.dvc(["remote", "remove", "--local", "minio"], project)


def test_push_interrupted_then_retry_then_clone_pull_bit_identical(
    moto: Moto, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = reproduced_project(tmp_path_factory.getbasetemp())
    outs = dvc_outs(project)
    assert any(o.startswith("data/interim/features") for o in outs)
    expected = tree_hashes(project, outs)
    assert len(expected) > 50
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"  # moto keeps state per process: a new bucket
    _use_s3_remote(project, moto.url, bucket)
    assert versioning.ensure_remote_bucket(project) is True  # created with the minio SDK

    # 1. the server goes away in the middle of a push (one object at a time, so it is mid-way)
    push = subprocess.Popen(
        [sys.executable, "-m", "dvc", "push", "--jobs", "1"],
        cwd=project,
        # fail fast once the server is gone (botocore's default retries take minutes here)
        env={**env(), "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _object_count(bucket) < 3 and push.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    partial = _object_count(bucket)
    moto.stop()
    out, _ = push.communicate(timeout=600)
    if push.returncode == 0:
        pytest.fail(f"push finished before the server stopped ({partial} objects): {out[-500:]}")
    assert "ERROR" in out, out[-2000:]
    assert "failed to push" in out.lower() or "connect" in out.lower(), out[-2000:]
    # our wrapper turns the same failure into one clear sentence
    with pytest.raises(versioning.VersioningError, match=r"not reachable|unreachable"):
        versioning.push(project)

    # 2. restart on the same port (moto keeps its state in this process) and retry
    moto.start()
    versioning.push(project)
    missing = json.loads(versioning.dvc(["status", "--cloud", "--json"], project).stdout or "{}")
    assert missing == {}, missing  # every object of every output is on the remote
    assert _object_count(bucket) > partial

    # 3. a fresh clone pulls every output back bit for bit
    clone = tmp_path_factory.mktemp("clone") / "c"
    sh(["git", "clone", "-q", str(project), str(clone)], project)
    _use_s3_remote(clone, moto.url, bucket)
    versioning.pull(clone)
    assert tree_hashes(clone, outs) == expected
    st = versioning.dvc(["status"], clone).stdout
    assert "changed" not in st, st
    assert "modified" not in st, st
    versioning.dvc(["remote", "default", "--unset", "--local"], project, check=False)
    versioning.dvc(["remote", "remove", "--local", "minio"], project)


def test_local_default_remote_push_pull(tmp_path_factory: pytest.TempPathFactory) -> None:
    project = reproduced_project(tmp_path_factory.getbasetemp())
    outs = dvc_outs(project)
    expected = tree_hashes(project, outs)
    info = versioning.remote_info(project)
    assert info.name == "local"
    assert info.url == str((project / ".dvc-remote").resolve())
    versioning.push(project)
    clone = tmp_path_factory.mktemp("clone_local") / "c"
    sh(["git", "clone", "-q", str(project), str(clone)], project)
    # the default remote is relative to the repository: point the clone at the original's
    versioning.configure_remote(clone, "local", str(project / ".dvc-remote"), local=True)
    versioning.pull(clone)
    assert tree_hashes(clone, outs) == expected


def test_no_secret_in_committed_dvc_config() -> None:
    from tests.test_dvc_support import REPO

    text = (REPO / ".dvc" / "config").read_text().lower()
    for word in ("secret", "access_key_id", "password", "credentialpath", "endpointurl"):
        assert word not in text
    assert threading.active_count() >= 1

"""The DVC remote misbehaving, with real processes on loopback: a bit flipped in the remote's
copy, the S3 server SIGKILLed in the middle of a push, S3 throttling (503 SlowDown) with latency.

What each proves: a damaged remote copy never reaches the workspace (remotes are verified on
pull: the committed default remote and every remote ``configure_remote`` adds); a push cut by a
dead server resumes to a complete remote from which an empty cache pulls every output back bit
for bit; throttling is retried a bounded number of times, a push that cannot get through fails
with a clear error in bounded time, and the objects that land are exactly the outputs' (no
duplicates, no multipart upload left open)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmrops import versioning
from tests.reliability.harness import (
    S3_ENV,
    FaultProxy,
    MotoServer,
    bucket_keys,
    copy_project,
    fingerprint,
    run,
    start,
)

OUT = "data/raw"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys for the moto server, and botocore's retries bounded (its default would spend
    minutes on a dead server)."""
    for k, v in {**S3_ENV, "AWS_MAX_ATTEMPTS": "3", "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("CMROPS_S3_ENDPOINT_URL", raising=False)


def _dvc(args: list[str], cwd: Path, **env: str):  # type: ignore[no-untyped-def]
    return run([sys.executable, "-m", "dvc", *args], cwd, env)


def _clone(project: Path, dest: Path) -> Path:
    done = run(["git", "clone", "-q", str(project), str(dest)], project)
    assert done.returncode == 0, done.stderr
    return dest


def _cache_keys(project: Path) -> set[str]:
    """Every object of the local cache as a remote stores it (``files/md5/ab/cdef...``)."""
    cache = project / ".dvc" / "cache"
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}


def _object_of(project: Path, path: str) -> str:
    """The cache key (``files/md5/ab/cdef...``) of output file ``path``, from dvc.lock."""
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (md5,) = [o["md5"] for o in lock["stages"]["collect"]["outs"] if o["path"] == path]
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def _flip(data: bytes, at: int = 100) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _use_s3(project: Path, endpoint: str, bucket: str) -> None:
    versioning.configure_remote(
        project, "s3", f"s3://{bucket}/dvc", endpoint=endpoint, default=True, local=True
    )


# --------------------------------------------------------------------------- corruption


def test_a_byte_flipped_in_the_default_remote_is_refused_on_pull(dvc_project, tmp_path):
    project = copy_project(dvc_project, tmp_path / "p")
    assert "verify = true" in (project / ".dvc/config").read_text()  # committed, for every clone
    versioning.push(project)
    good = (project / OUT / "samples.parquet").read_bytes()
    damaged = project / ".dvc-remote" / _object_of(project, f"{OUT}/samples.parquet")
    damaged.chmod(0o644)
    damaged.write_bytes(_flip(good))  # same size, one bit off: only its hash tells

    clone = _clone(project, tmp_path / "clone")  # an empty cache
    # the default remote's URL is relative to the repository: point at the original's
    _dvc(["remote", "modify", "--local", "local", "url", str(project / ".dvc-remote")], clone)
    pull = _dvc(["pull", "collect"], clone)
    said = pull.stdout + pull.stderr
    assert pull.returncode != 0, said  # refused, loudly, naming the file
    assert f"Checkout failed for following targets:\n{OUT}/samples.parquet" in said, said
    assert not (clone / OUT / "samples.parquet").exists()  # never the damaged bytes
    assert (clone / OUT / "quarantine.parquet").is_file()  # the sound outputs are there
    status = _dvc(["status", "--json", "collect"], clone)
    assert "not in cache" in status.stdout, status.stdout  # and not "up to date"


def test_a_byte_flipped_in_an_s3_remote_is_refused_on_pull(dvc_project, moto, s3_env, tmp_path):
    import boto3

    project = copy_project(dvc_project, tmp_path / "p")
    _use_s3(project, moto.url, "flipped")  # as cmrops configures every remote: verified
    assert versioning.ensure_remote_bucket(project)
    versioning.push(project)
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    key = "dvc/" + _object_of(project, f"{OUT}/samples.parquet")
    body = s3.get_object(Bucket="flipped", Key=key)["Body"].read()
    s3.put_object(Bucket="flipped", Key=key, Body=_flip(body))
    clone = _clone(project, tmp_path / "clone")
    _use_s3(clone, moto.url, "flipped")
    with pytest.raises(versioning.VersioningError, match="does not match its hash") as e:
        versioning.pull(clone, targets=["collect"])
    assert f"{OUT}/samples.parquet" in str(e.value)
    assert not (clone / OUT / "samples.parquet").exists()
    assert (clone / OUT / "quarantine.parquet").is_file()
    # the control: an S3 remote without verification lands the damaged file silently
    clone = _clone(project, tmp_path / "unverified")
    _use_s3(clone, moto.url, "flipped")
    _dvc(["remote", "modify", "--local", "s3", "verify", "false"], clone)
    pull = _dvc(["pull", "collect"], clone)
    damaged = (clone / OUT / "samples.parquet").read_bytes() == _flip(body)
    print(f"without verify: dvc pull exit {pull.returncode}, damaged file checked out: {damaged}")


# --------------------------------------------------------------------------- a dead server


def test_server_killed_mid_push_then_repush_and_pull_into_an_empty_cache(
    dvc_project, raw_project, moto, s3_env, tmp_path
):
    """The S3 endpoint DVC talks to (a proxy process in front of the storage) is SIGKILLed after
    a few objects of a one-at-a-time push - connections reset mid-request, as when a MinIO node
    dies - then comes back on the same address with what its storage kept."""
    project = copy_project(dvc_project, tmp_path / "p")
    endpoint = FaultProxy(moto.url)
    try:
        _use_s3(project, endpoint.url, "killed")
        assert versioning.ensure_remote_bucket(project)
        expected = {f"dvc/{k}" for k in _cache_keys(project)}
        push = start([sys.executable, "-m", "dvc", "push", "--jobs", "1"], project)
        deadline = time.monotonic() + 300
        while push.poll() is None and time.monotonic() < deadline:
            if len(bucket_keys(moto.url, "killed")) >= 3:
                break
            time.sleep(0.05)
        partial = len(bucket_keys(moto.url, "killed"))
        endpoint.kill()
        out, err = push.communicate(timeout=600)
        if push.returncode == 0:
            pytest.fail(f"the push finished before the kill ({partial} objects): {err[-500:]}")
        assert "ERROR" in out + err
        with pytest.raises(versioning.VersioningError, match="not reachable"):
            versioning.push(project)  # our wrapper: one sentence saying what to do
        endpoint = FaultProxy(moto.url, port=endpoint.port)  # back, with what it had stored
        assert len(bucket_keys(moto.url, "killed")) >= partial
        versioning.push(project)  # resumes
        assert set(bucket_keys(moto.url, "killed")) == expected  # complete, nothing extra
        missing = _dvc(["status", "--cloud", "--json"], project)
        assert json.loads(missing.stdout or "{}") == {}, missing.stdout
        clone = _clone(project, tmp_path / "clone")  # an empty cache, verified pull
        _use_s3(clone, endpoint.url, "killed")
        versioning.pull(clone, targets=["collect"])
        assert fingerprint(clone, [OUT]) == raw_project.reference
        print(f"killed after {partial} of {len(expected)} objects; re-push and pull complete")
    finally:
        endpoint.stop()


def test_503_slowdown_is_retried_boundedly_without_duplicates(dvc_project, moto, s3_env, tmp_path):
    import boto3

    project = copy_project(dvc_project, tmp_path / "p")
    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(
        Bucket="throttled"
    )
    proxy = FaultProxy(moto.url, slowdown=1000, latency=0.05)  # every write refused, for now
    try:
        _use_s3(project, proxy.url, "throttled")
        expected = {f"dvc/{k}" for k in _cache_keys(project)}
        t0 = time.monotonic()
        with pytest.raises(versioning.VersioningError, match=r"failed to (push|transfer)") as e:
            versioning.push(project)
        refused_after = time.monotonic() - t0
        assert "rerun once it is back" in str(e.value)  # what to do
        stats = proxy.control()
        attempts = stats["writes"]
        assert attempts, stats
        most = max(attempts.values())
        assert most <= 15, attempts  # bounded: botocore's attempts x s3fs's retries at most
        assert bucket_keys(moto.url, "throttled") == {}  # nothing half-written
        proxy.control(slowdown=1, reset=1)  # now only each object's first attempt is refused
        versioning.push(project)
        stats = proxy.control()
        assert stats["throttled"] == len(stats["writes"]) == len(expected), stats
        assert max(stats["writes"].values()) == 2, stats  # one refusal, one retry, per object
        assert set(bucket_keys(moto.url, "throttled")) == expected  # each object once
    finally:
        proxy.stop()
    print(
        f"always throttled: push failed after {refused_after:.1f} s, at most {most} attempts "
        f"per object ({str(e.value)[:200]}...); throttled once: {len(expected)} objects, 2 "
        "attempts each"
    )

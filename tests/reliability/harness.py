"""What the reliability tests share: the ``cmrops`` command run as a user runs it, output
fingerprints, and real servers on loopback in their own processes (a moto S3 server whose state
survives SIGKILL, a fault-injecting proxy in front of it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.test_dvc_support import REPO, env

BIN = Path(sys.executable).parent
CMROPS = str(BIN / "cmrops")
#: Files never compared: wall-clock timings, and the .gitignore DVC writes beside its outputs.
VOLATILE = {"throughput.json", "train_throughput.json", ".gitignore"}


def run(
    args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """A command as a user types it (``cmrops ...``, ``dvc ...``), output captured."""
    return subprocess.run(
        args, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def cmrops(
    *args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return run([CMROPS, *args], cwd, extra_env, timeout)


def start(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a command in its own session (so a test can kill it and every worker it spawned)."""
    return subprocess.Popen(
        args, cwd=cwd, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def fingerprint(root: Path, rels: Iterable[str]) -> dict[str, str]:
    """SHA-256 of every file under ``rels`` (timings and preprocess's resume shards left out)."""
    out: dict[str, str] = {}
    for rel in rels:
        base = root / rel
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            parts = f.relative_to(root).parts
            if f.name in VOLATILE or "shards" in parts:
                continue
            out["/".join(parts)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def copy_project(src: Path, dst: Path, drop: Iterable[str] = ()) -> Path:
    """A copy of a built project without the outputs ``drop`` (and without its run log/locks)."""
    shutil.copytree(src, dst, symlinks=True)
    for rel in [*drop, ".cmrops"]:
        p = dst / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:g} s")
        time.sleep(0.1)


def killpg(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by :func:`start` and everything in its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
S3_ENV = {**S3_KEYS, "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """``moto_server`` in its own process on a free loopback port (an in-memory S3 store; the
    tests that kill "the server" kill a :class:`FaultProxy` in front of it, so what was stored
    survives, as on an S3 server's disk)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env={**env(), **S3_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"{self.url}/moto-api/", self.proc, "moto_server")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class FaultProxy:
    """tests/reliability/s3_fault_proxy.py in its own process, in front of ``upstream``."""

    def __init__(
        self, upstream: str, slowdown: int = 0, latency: float = 0.0, port: int = 0
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.s3_fault_proxy", "--upstream", upstream,
             "--slowdown", str(slowdown), "--latency", str(latency), "--port", str(port)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fault proxy did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def control(self, **settings: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in settings.items())
        req = urllib.request.Request(
            f"{self.url}/__faults__?{query}", method="POST" if settings else "GET"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return dict(json.loads(r.read()))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: every connection through it is reset mid-request, as by a dead server."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def bucket_keys(endpoint: str, bucket: str) -> dict[str, int]:
    """Every object of ``bucket`` (key -> size), and no multipart upload left open."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_keys())
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not open_uploads, f"multipart uploads left open: {open_uploads}"
    return keys


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

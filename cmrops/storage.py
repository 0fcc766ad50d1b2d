"""Storage roots: where stage outputs live, as a URL (a local folder or ``s3://bucket/prefix``).

A *root* holds the stage folders (``data/raw``, ``data/interim``, ...) at the same relative paths
as the repository. Stages themselves read and write local files; a task that runs on a worker
sharing no disk with the others (Celery/Kubernetes executors) pulls its inputs from the root into
a local work folder (:func:`pull`), runs the stage there, and pushes its outputs back
(:func:`push`). With a local root (the default) both are no-ops: the root *is* the work folder.

S3-compatible servers (MinIO, AWS, moto on loopback) are configured by the environment only,
never by a committed file:

* ``CMROPS_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``) - e.g. ``http://127.0.0.1:9000``;
* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` - the credentials (an endpoint written
  ``http://KEY:SECRET@host:9000`` supplies them when these are unset).

Endpoints are shown with their credentials masked (:func:`cmrops.redaction.redact`).

:func:`ensure_bucket` creates a missing bucket with the ``minio`` SDK; :func:`check` writes,
reads back and deletes a probe object (``cmrops storage check``).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cmrops.redaction import redact, redact_url, split_credentials

__all__ = [
    "CheckResult",
    "Root",
    "StorageError",
    "check",
    "ensure_bucket",
    "parse_root",
    "pull",
    "push",
]


class StorageError(RuntimeError):
    """A storage root is unreachable, unwritable or misconfigured."""


@dataclass(frozen=True)
class Root:
    """A parsed storage root. ``scheme`` is ``"file"`` or ``"s3"``."""

    url: str
    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: str = ""  # local folder (file scheme)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def join(self, rel: str) -> str:
        rel = rel.strip("/")
        if self.is_local:
            return str(Path(self.path) / rel)
        key = f"{self.prefix}/{rel}" if self.prefix else rel
        return f"{self.bucket}/{key}"


def parse_root(url: str | os.PathLike[str], base: str | os.PathLike[str] = ".") -> Root:
    """``"data-root"``, ``"/abs/path"``, ``"file:///abs"`` or ``"s3://bucket/prefix"``."""
    text = os.fspath(url)
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "minio"):
        if not parsed.netloc:
            raise StorageError(f"{redact(text)}: an s3 root needs a bucket (s3://bucket/prefix)")
        return Root(text, "s3", bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    if parsed.scheme == "file":
        return Root(text, "file", path=str(Path(parsed.path).resolve()))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise StorageError(
            f"{redact(text)}: unsupported storage scheme {parsed.scheme!r} (file, s3)"
        )
    p = Path(text)
    return Root(text, "file", path=str((p if p.is_absolute() else Path(base) / p).resolve()))


def endpoint_url() -> str | None:
    return os.environ.get("CMROPS_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_and_keys(
    endpoint: str | None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> tuple[str | None, str | None, str | None]:
    """``(endpoint without credentials, access key, secret key)``: keys given, else
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, else the endpoint's ``KEY:SECRET@``."""
    user = password = None
    if endpoint:
        endpoint, user, password = split_credentials(endpoint)
    access = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or user
    secret = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or password
    return endpoint, access, secret


def _s3fs(
    endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None
) -> Any:
    import s3fs

    endpoint, access, secret = endpoint_and_keys(endpoint or endpoint_url(), access_key, secret_key)
    kwargs: dict[str, Any] = {
        "key": access,
        "secret": secret,
        "skip_instance_cache": True,
        "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 5, "read_timeout": 30},
    }
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    return s3fs.S3FileSystem(**kwargs)


def ensure_bucket(
    bucket: str,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> bool:
    """Create ``bucket`` on the S3-compatible server when missing (``minio`` SDK).

    Returns True when it was created. Raises :class:`StorageError` when the server cannot be
    reached or refuses."""
    from minio import Minio
    from minio.error import S3Error

    shown = redact_url(endpoint or endpoint_url())
    endpoint, access_key, secret_key = endpoint_and_keys(
        endpoint or endpoint_url(), access_key, secret_key
    )
    if not endpoint:
        raise StorageError(
            "no S3 endpoint: set CMROPS_S3_ENDPOINT_URL (e.g. http://127.0.0.1:9000)"
        )
    u = urlparse(endpoint)
    import urllib3

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=30),
        retries=urllib3.Retry(total=1, backoff_factor=0.2),
    )
    client = Minio(
        u.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=u.scheme == "https",
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        http_client=http,
    )
    try:
        if client.bucket_exists(bucket):
            return False
        client.make_bucket(bucket)
        return True
    except S3Error as e:
        raise StorageError(redact(f"s3://{bucket} at {shown}: {e.code}: {e.message}")) from e
    except (OSError, urllib3.exceptions.HTTPError) as e:
        raise StorageError(redact(f"S3 server at {shown} is not reachable: {e}")) from e


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found; ``url`` and ``detail`` have credentials masked."""

    url: str
    reachable: bool
    writable: bool
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.reachable and self.writable


def check(
    url: str,
    endpoint: str | None = None,
    create_bucket: bool = True,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> CheckResult:
    """Tell whether the root at ``url`` is reachable and writable: write, read back and delete a
    probe object. A missing S3 bucket is created first when ``create_bucket``. Keys: given, else
    the environment's, else the endpoint URL's (:func:`endpoint_and_keys`)."""
    t0 = time.perf_counter()
    try:
        root = parse_root(url)
    except StorageError as e:
        return CheckResult(redact_url(url), False, False, str(e), 0.0)
    probe_rel = f".cmrops-probe-{uuid.uuid4().hex}"
    payload = b"cmrops storage probe\n"

    def result(reachable: bool, writable: bool, detail: str) -> CheckResult:
        return CheckResult(
            redact_url(url), reachable, writable, redact(detail), round(time.perf_counter() - t0, 3)
        )

    if root.is_local:
        folder = Path(root.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / probe_rel
            probe.write_bytes(payload)
            ok = probe.read_bytes() == payload
            probe.unlink()
        except OSError as e:
            return result(folder.exists(), False, f"{folder}: {e}")
        return result(True, ok, f"local folder {folder}" + ("" if ok else " read back differs"))
    endpoint = endpoint or endpoint_url()
    try:
        if create_bucket and endpoint:
            if ensure_bucket(root.bucket, endpoint, access_key, secret_key):
                created = f" (bucket {root.bucket} created)"
            else:
                created = ""
        else:
            created = ""
        fs = _s3fs(endpoint, access_key, secret_key)
        path = root.join(probe_rel)
        fs.pipe_file(path, payload)
        ok = fs.cat_file(path) == payload
        fs.rm_file(path)
    except StorageError as e:
        return result(False, False, str(e))
    except PermissionError as e:
        return result(True, False, f"{url}: not writable: {e}")
    except Exception as e:  # botocore/aiohttp errors: unreachable or refused
        return result(False, False, f"{url} at {endpoint or 'AWS'}: {type(e).__name__}: {e}")
    return result(True, ok, f"s3 {root.bucket}/{root.prefix} at {endpoint or 'AWS'}{created}")


def pull(root_url: str, rels: list[str], work: str | os.PathLike[str]) -> None:
    """Copy the folders/files ``rels`` from the root into ``work`` (no-op for a local root that
    is ``work`` itself)."""
    root = parse_root(root_url)
    work = Path(work).resolve()
    if root.is_local:
        if Path(root.path) != work:
            import shutil

            for rel in rels:
                src, dst = Path(root.join(rel)), work / rel
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        return
    fs = _s3fs()
    for rel in rels:
        remote = root.join(rel)
        if not fs.exists(remote):
            continue
        dst = work / rel
        if fs.isdir(remote):
            dst.mkdir(parents=True, exist_ok=True)
            fs.get(remote + "/", str(dst) + "/", recursive=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(dst))


def push(work: str | os.PathLike[str], rels: list[str], root_url: str) -> None:
    """Copy ``rels`` from ``work`` to the root (overwriting: stage outputs are deterministic, so a
    retried push writes the same bytes)."""
    root = parse_root(root_url)
    work = Path(work).resolve()
    if root.is_local:
        if Path(root.path) != work:
            import shutil

            for rel in rels:
                src, dst = work / rel, Path(root.join(rel))
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        return
    fs = _s3fs()
    for rel in rels:
        src = work / rel
        if src.is_dir():
            fs.put(str(src) + "/", root.join(rel) + "/", recursive=True)
            # S3 has no folders: an empty one (an output DVC declares, e.g. data/raw/downloads)
            # is kept as a zero-byte "name/" marker, which pull makes a folder again
            for d in [src, *(p for p in src.rglob("*") if p.is_dir())]:
                if not any(d.iterdir()):
                    fs.pipe_file(root.join(d.relative_to(work).as_posix()) + "/", b"")
        elif src.is_file():
            fs.put_file(str(src), root.join(rel))
